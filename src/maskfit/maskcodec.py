"""Lossless coding of a layer's binary mask below 1 bit per weight (mask file format v2).

A trained mask is far from random: MiniLM's MRPC masks keep 5–15% zeros, whose entropy
is 0.3–0.6 bits per weight. Each layer is coded on its own as i.i.d. Bernoulli bits with
the layer's empirical probability of a one, by an asymmetric numeral system coder
(``constriction``'s ``AnsCoder``, Rust). Measured on trained MiniLM masks
(``benchmarks/mask_codec.py``) it lands at 1.0002-1.0003x the per-layer entropy bound
``n·H(p)`` and codes or decodes a MiniLM mask in about 0.1 s. Golomb-Rice coding of the
gaps between zeros, the classic alternative for sparse bitmaps, was not tried: ANS already
sits at the bound of this model, with no bit-level code of ours to maintain.

Layer codecs (named in the file's metadata, per layer):

* ``ans``: the ANS words (little-endian uint32, as bytes), with ``p1`` the probability of
  a one. ``p1`` is stored as the exact float the encoder used, so the decoder quantises it
  identically;
* ``packed``: plain 1 bit per weight (:func:`maskfit.masking.pack_bits`), used where ANS
  would not be smaller (a mask near 50% zeros);
* ``constant``: all zeros or all ones, no payload.
"""
from __future__ import annotations

import numpy as np
import torch

from .masking import pack_bits, unpack_bits


def _model(p1: float):
    import constriction

    return constriction.stream.model.Bernoulli(p1, perfect=False)


def encode(mask: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """A bool mask → (codec description, uint8 payload); see the module doc."""
    bits = mask.reshape(-1).cpu().numpy().astype(np.int32)
    n, ones = bits.size, int(bits.sum())
    if ones in (0, n):
        return {"codec": "constant", "value": int(ones == n and n > 0)}, torch.zeros(0, dtype=torch.uint8)
    packed = pack_bits(mask.reshape(-1).cpu())
    import constriction

    p1 = ones / n
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(bits, _model(p1))
    words = coder.get_compressed().astype("<u4")
    if words.nbytes >= packed.numel():
        return {"codec": "packed"}, packed
    return {"codec": "ans", "p1": p1}, torch.from_numpy(words.view(np.uint8).copy())


def decode(codec: dict, payload: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`encode`: the bool mask of ``shape``. Raises ``ValueError`` on bad input."""
    n = int(torch.Size(shape).numel())
    kind = codec.get("codec") if isinstance(codec, dict) else None
    if kind == "constant":
        if payload.numel() or codec.get("value") not in (0, 1):
            raise ValueError("bad constant layer")
        return torch.full(tuple(shape), bool(codec["value"]), dtype=torch.bool)
    if kind == "packed":
        return unpack_bits(payload, shape)
    if kind == "ans":
        p1 = codec.get("p1")
        if not isinstance(p1, float) or not 0.0 < p1 < 1.0 or payload.numel() % 4:
            raise ValueError("bad ans layer")
        import constriction

        words = payload.cpu().numpy().view("<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            bits = coder.decode(_model(p1), n)
        except BaseException as e:  # constriction raises its own errors on malformed streams
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ValueError(f"undecodable ans stream ({e})") from None
        if not coder.is_empty():
            raise ValueError("ans stream has data left over")
        return torch.from_numpy(np.asarray(bits, dtype=np.bool_)).view(*shape)
    raise ValueError(f"unknown layer codec {kind!r}")


def entropy_bits(mask: torch.Tensor) -> float:
    """The empirical entropy bound of ``mask`` as i.i.d. bits: ``n·H(p1)``."""
    n = mask.numel()
    p = float(mask.sum()) / n if n else 0.0
    if p in (0.0, 1.0):
        return 0.0
    return -n * (p * np.log2(p) + (1 - p) * np.log2(1 - p))
