"""pyllm: a small GPT-2 style language model written from scratch.

C99 + OpenMP kernels bound through cffi, with a pure-NumPy backend that does the same work wherever
the C extension cannot be built. See README.md.

Public names::

    GPTConfig, GPT                       the model (pyllm.model)
    AdamW, clip_grad_norm, cosine_lr      optimisation (pyllm.optim)
    load, load_gpt2, CheckpointError      model files and Hugging Face GPT-2 (pyllm.checkpoint)
    CharTokenizer, BPETokenizer, load_tokenizer   tokenizers (pyllm.tokenizer)
    get_backend, set_backend, available_backends, backend_reason, BackendUnavailable,
    get_num_threads, set_num_threads,
    get_simd, set_simd, available_simd   backend choice, threads, SIMD level (pyllm.backend)
    quantize, QuantizedGPT               int8 (Q8_0) inference models (pyllm.quant)
    LoRA                                 low-rank adapters for finetuning (pyllm.lora)
    format_instruction, instruction_batch    instruction data (pyllm.finetune)
    Classifier                           a classification head on a GPT (pyllm.classify)
    explore                              attention maps, head scores, ablation, nearest tokens,
                                         the offline viewer (pyllm.explore)
"""
__version__ = "0.1.0"

from .backend import (BackendUnavailable, available_backends, available_simd, backend_reason,
                      get_backend, get_num_threads, get_simd, set_backend, set_num_threads,
                      set_simd)
from .checkpoint import CheckpointError, load, load_gpt2
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, cosine_lr
from .classify import Classifier
from .finetune import format_instruction, instruction_batch
from .lora import LoRA
from .quant import QuantizedGPT, quantize
from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from . import explore  # noqa: E402 (after the model it works on)

__all__ = ["__version__", "BackendUnavailable", "available_backends", "backend_reason",
           "get_backend", "get_num_threads", "set_backend", "set_num_threads",
           "available_simd", "get_simd", "set_simd",
           "GPT", "GPTConfig", "AdamW", "clip_grad_norm", "cosine_lr",
           "CheckpointError", "load", "load_gpt2", "QuantizedGPT", "quantize", "LoRA",
           "format_instruction", "instruction_batch", "Classifier",
           "BPETokenizer", "CharTokenizer", "load_tokenizer", "explore"]
