"""Visual tokenizers: image -> grid of discrete token ids, the targets of BEiT-style pretraining."""

from sslvit.tokenizers.base import VisualTokenizer, token_grid
from sslvit.tokenizers.dalle import DALLEStyleEncoder, DALLETokenizer
from sslvit.tokenizers.dvae import DVAE, kl_to_uniform
from sslvit.tokenizers.io import load_tokenizer, save_tokenizer
from sslvit.tokenizers.norm_ema_quantizer import NormEMAQuantizer
from sslvit.tokenizers.vqkd import VQKD

__all__ = [
    "DVAE",
    "VQKD",
    "DALLEStyleEncoder",
    "DALLETokenizer",
    "NormEMAQuantizer",
    "VisualTokenizer",
    "kl_to_uniform",
    "load_tokenizer",
    "save_tokenizer",
    "token_grid",
]
