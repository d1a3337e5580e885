"""Tiny random-weight ERNIE-Image for demo mode and tests, built through mflux's real code.

mflux constructs the VAE and text encoder with hard-coded full-size dimensions, so a config
override cannot shrink them; the only hook is ``ErnieImageInitializer._init_models`` (a static
method looked up on the class). :func:`tiny_construct` swaps it for :func:`_init_tiny_models`
only while a model is being constructed, under a module lock, and always restores it.
Everything else (weight loading, quantization, tokenizer, LoRA, scheduler, VAE, training) is
mflux's own code reading a directory written by mflux's ``ModelSaver``.

Without the swap, tiny weights load into lazily-initialised full-size layers
(``update(strict=False)``) and ``mx.eval`` then tries to allocate the whole 11B-parameter
model, so :func:`assert_tiny` checks the dimensions after every construction.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .variants import TINY_ARCH

# Channel counts: GroupNorm uses 32 groups -> multiples of 32; quantized Linear input dims must
# be multiples of 64 (group size 64), which is why the last VAE block (mid attention) has 64.
VAE_CH = (32, 32, 32, 64)  # 4 blocks keep the 8x spatial factor ERNIE's latent packing assumes
TX: dict[str, Any] = dict(
    hidden_size=TINY_ARCH.hidden,  # 64
    num_attention_heads=2,  # head_dim 32
    num_layers=TINY_ARCH.layers,
    ffn_hidden_size=TINY_ARCH.ffn,
    in_channels=128,  # 32 latent channels x 2x2 packing, fixed by ErnieLatentCreator
    out_channels=TINY_ARCH.out_channels,
    text_in_dim=TINY_ARCH.text_in,  # ErniePromptEncoder.build_text_batch pads CFG batches with a fixed 3072
    rope_axes_dim=[8, 12, 12],  # must sum to head_dim
)
TE = dict(
    vocab_size=512,
    hidden_size=3072,  # see text_in_dim
    num_hidden_layers=2,  # ERNIE uses the second-to-last hidden state
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    intermediate_size=128,
)
#: Bumped whenever the recipe changes, so stale cached weights are rebuilt.
RECIPE_VERSION = "1"
_SWAP_LOCK = threading.RLock()
_BUILD_LOCK = threading.Lock()


def _tiny_vae():
    from mflux.models.common.vae.block_decoder import VAEBlockDecoder
    from mflux.models.flux2.model.flux2_vae.decoder.decoder import Flux2Decoder
    from mflux.models.flux2.model.flux2_vae.encoder.encoder import Flux2Encoder
    from mflux.models.flux2.model.flux2_vae.vae import Flux2VAE

    vae = Flux2VAE(decoder_block_out_channels=VAE_CH)  # its full-size encoder is still lazy ...
    vae.encoder = Flux2Encoder(block_out_channels=VAE_CH)  # ... and replaced before evaluation
    vae.decoder = Flux2Decoder(block_out_channels=VAE_CH)
    vae.decode_mode = VAEBlockDecoder.LOW_MEMORY
    return vae


def _init_tiny_models(model, model_config) -> None:
    """Drop-in for ``ErnieImageInitializer._init_models`` that builds the tiny modules."""
    from mflux.models.ernie_image.model.ernie_text_encoder.text_encoder import ErnieMistralTextEncoder
    from mflux.models.ernie_image.model.ernie_transformer.transformer import ErnieTransformer

    model.vae = _tiny_vae()
    overrides = dict(model_config.transformer_overrides or {})  # never mutate the shared config
    overrides.update(TX)
    model.transformer = ErnieTransformer(**overrides)
    model.text_encoder = ErnieMistralTextEncoder(**TE)


@contextlib.contextmanager
def tiny_construct() -> Iterator[None]:
    """Make every ERNIE model constructed inside the block tiny (this thread holds the lock)."""
    from mflux.models.ernie_image.ernie_image_initializer import ErnieImageInitializer

    with _SWAP_LOCK:
        original = ErnieImageInitializer.__dict__["_init_models"]
        ErnieImageInitializer._init_models = staticmethod(_init_tiny_models)
        try:
            yield
        finally:
            ErnieImageInitializer._init_models = original


def assert_tiny(model) -> None:
    """Fail loudly if a demo model did not come out tiny (the swap was bypassed)."""
    hidden = getattr(model.transformer, "hidden_size", None)
    layers = len(getattr(model.transformer, "layers", ()))
    if hidden != TX["hidden_size"] or layers != TX["num_layers"]:
        raise RuntimeError(f"tiny ERNIE expected hidden 64 x {TX['num_layers']} layers, got {hidden} x {layers}")


def _make_tokenizer(out_dir: Path):
    """Byte-level BPE trained on a few sentences, saved in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TE["vocab_size"],
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "a photo of a red apple on a wooden table",
        "close-up portrait of a barn owl perched on a mossy branch",
        "a watercolor painting of a quiet harbour at dawn",
    ] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def _write_tiny_dir(root: Path, seed: int) -> None:
    import mlx.core as mx
    from mflux.models.common.tokenizer import LanguageTokenizer
    from mflux.models.common.weights.saving.model_saver import ModelSaver
    from mflux.models.ernie_image.model.ernie_text_encoder.text_encoder import ErnieMistralTextEncoder
    from mflux.models.ernie_image.model.ernie_transformer.transformer import ErnieTransformer
    from mflux.models.ernie_image.weights.ernie_weight_definition import ErnieWeightDefinition

    mx.random.seed(seed)
    fake = types.SimpleNamespace()
    fake.vae = _tiny_vae()
    fake.transformer = ErnieTransformer(**TX)
    fake.text_encoder = ErnieMistralTextEncoder(**TE)
    for module in (fake.vae, fake.transformer, fake.text_encoder):
        module.set_dtype(mx.bfloat16)  # stored as bf16 like the real checkpoints
        mx.eval(module.parameters())
    fake.tokenizers = {"ernie": LanguageTokenizer(tokenizer=_make_tokenizer(root / "tokenizer"))}
    ModelSaver.save_model(model=fake, bits=None, base_path=str(root), weight_definition=ErnieWeightDefinition)
    (root / "KIAPI_TINY").write_text(f"tiny random-weight ERNIE-Image, recipe {RECIPE_VERSION}, seed {seed}\n")


def ensure_tiny_dir(cache_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """The tiny model directory under ``cache_dir``, written once (build in a temp dir, rename).

    About 13 MB, built in ~0.2 s. Both variants share it: they differ only by their mflux
    ``ModelConfig`` (scheduler shift, guidance support), which the tiny model keeps.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-ernie-v{RECIPE_VERSION}-s{seed}"
    if (target / "KIAPI_TINY").is_file():
        return target
    with _BUILD_LOCK:
        if (target / "KIAPI_TINY").is_file():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-ernie-", dir=cache_dir))
        try:
            _write_tiny_dir(tmp, seed)
            try:
                os.replace(tmp, target)
            except OSError:  # another process won the race (target exists and is not empty)
                if not (target / "KIAPI_TINY").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_tiny_lora(path: str | os.PathLike[str], *, rank: int = 4, seed: int = 1, scale: float = 0.1) -> Path:
    """A PEFT-style ERNIE LoRA for the tiny model (attention, MLP and text_proj targets)."""
    import mlx.core as mx

    mx.random.seed(seed)
    h, f = TX["hidden_size"], TX["ffn_hidden_size"]
    weights = {}
    for block in range(TX["num_layers"]):
        for name, (din, dout) in {
            "self_attention.to_q": (h, h),
            "self_attention.to_k": (h, h),
            "self_attention.to_v": (h, h),
            "self_attention.to_out.0": (h, h),
            "mlp.gate_proj": (h, f),
            "mlp.up_proj": (h, f),
            "mlp.linear_fc2": (f, h),
        }.items():
            weights[f"transformer.layers.{block}.{name}.lora_A.weight"] = mx.random.normal((rank, din)) * scale
            weights[f"transformer.layers.{block}.{name}.lora_B.weight"] = mx.random.normal((dout, rank)) * scale
    weights["transformer.text_proj.lora_A.weight"] = mx.random.normal((rank, TX["text_in_dim"])) * scale / 10
    weights["transformer.text_proj.lora_B.weight"] = mx.random.normal((h, rank)) * scale
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), weights)
    return path
