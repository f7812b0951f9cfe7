"""Training the masks on the real MiniLM never touches a pretrained (or head) tensor."""
from __future__ import annotations

import pytest
import torch

import maskfit
from maskfit import binary_masks, build_model, fingerprint, mask_model, masked_layers

N_STEPS = 3


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so equality is bit equality (-0.0 != 0.0, NaN == NaN)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


@pytest.fixture(scope="module")
def trained(sst2_batch):
    torch.manual_seed(0)
    model = build_model("minilm", "sequence", ["0", "1"])
    mask_model(model)
    model.train()  # dropout on, as in real training
    # names as in transformers (the MaskfitModel wrapper prefixes them with "model.")
    frozen = {n: _bits(t) for n, t in model.get_base_model().state_dict(keep_vars=True).items()
              if not n.endswith(".scores")}
    scores0 = {n: m.scores.detach().clone() for n, m in masked_layers(model).items()}
    masks0 = {n: m.clone() for n, m in binary_masks(model).items()}
    fp0 = fingerprint(model)
    # A careless optimiser over *all* parameters (not just the scores), plain Adam, large lr
    # so masks flip within a few steps: the frozen tensors must still not move.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, frozen_grads = [], []
    for _ in range(N_STEPS):
        opt.zero_grad()
        out = model(**sst2_batch)
        out.loss.backward()
        frozen_grads.append([n for n, p in model.named_parameters() if not n.endswith(".scores") and p.grad is not None])
        opt.step()
        losses.append(float(out.loss.detach()))
    return dict(model=model, frozen=frozen, scores0=scores0, masks0=masks0, fp0=fp0, losses=losses,
                frozen_grads=frozen_grads)


def test_frozen_tensors_are_bit_identical(trained):
    model, frozen = trained["model"], trained["frozen"]
    state = model.get_base_model().state_dict(keep_vars=True)
    # The check covers every kind of frozen tensor, head included.
    for must in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                 "bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias",
                 "bert.encoder.layer.0.attention.self.query.weight",  # unmasked block
                 "bert.encoder.layer.3.attention.self.query.weight",  # masked block
                 "bert.encoder.layer.3.attention.self.query.bias",
                 "bert.encoder.layer.5.output.LayerNorm.weight",
                 "bert.pooler.dense.weight", "bert.pooler.dense.bias",
                 "classifier.weight", "classifier.bias"):
        assert must in frozen, must
    assert set(frozen) == {n for n in state if not n.endswith(".scores")}
    changed = [n for n, b in frozen.items() if not torch.equal(_bits(state[n]), b)]
    assert changed == []
    assert all(g == [] for g in trained["frozen_grads"]), trained["frozen_grads"]
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.endswith(".scores"))


def test_fingerprint_unchanged(trained):
    assert fingerprint(trained["model"]) == trained["fp0"]


def test_scores_moved_and_masks_flipped(trained):
    model = trained["model"]
    assert all(torch.isfinite(torch.tensor(trained["losses"])))
    layers = masked_layers(model)
    assert set(layers) == set(trained["scores0"])
    for name, layer in layers.items():
        assert not torch.equal(layer.scores.detach(), trained["scores0"][name]), name
    masks = binary_masks(model)
    flips = {n: int((masks[n] != trained["masks0"][n]).sum()) for n in masks}
    assert sum(flips.values()) > 0
    # With lr 1e-2 over a score range of 2e-2, flips happen throughout the encoder.
    assert sum(v > 0 for v in flips.values()) >= len(flips) // 2, flips
    stats = maskfit.mask_stats(model)
    assert stats["sparsity"] != pytest.approx(0.05, abs=1e-6)


def test_masked_model_output_depends_on_the_masks(trained, sst2_batch):
    model = trained["model"]
    model.eval()
    with torch.no_grad():
        logits = model(**sst2_batch).logits
        # Put the initial masks back (the scores are the only state): output changes.
        saved = {n: m.scores.detach().clone() for n, m in masked_layers(model).items()}
        for n, m in masked_layers(model).items():
            m.scores.copy_(trained["scores0"][n])
        logits0 = model(**sst2_batch).logits
        for n, m in masked_layers(model).items():
            m.scores.copy_(saved[n])
        again = model(**sst2_batch).logits
    assert not torch.equal(logits, logits0)
    assert torch.equal(logits, again)
    model.train()
