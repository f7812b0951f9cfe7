"""The method itself: initial scores, the straight-through binarizer, MaskedLinear,
architecture maps, what mask_model freezes and shares, and config validation."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskfit
from maskfit import MaskConfig, MaskedLinear, ModelError, build_model, mask_model, masked_layers, merged
from maskfit.masking import ARCHITECTURES, binary_masks, initial_scores, target_names, unmask_model

# --------------------------------------------------------------------------- initial scores

SPARSITIES = [0.0, 0.01, 0.05, 0.5, 0.95, 1.0]
SHAPES = [(7, 13), (384, 384), (1536, 384), (1, 1), (3, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", SPARSITIES)
def test_initial_sparsity_is_exact_and_in_range(p, shape):
    cfg = MaskConfig(init_sparsity=p)
    tau, s = cfg.threshold, cfg.init_scale
    scores = initial_scores(shape, cfg, name="encoder.layer.3.attention.self.query")
    n = scores.numel()
    assert scores.shape == torch.Size(shape) and scores.dtype == torch.float32
    below = int((scores < tau).sum())
    assert below == round(p * n), (below, p * n)
    # The layer reads the mask with the same comparison: its zeros are exactly these.
    lin = nn.Linear(shape[1], shape[0])
    layer = MaskedLinear(lin, tau, scores=scores.clone())
    assert int((~layer.mask()).sum()) == below
    # All scores lie in [τ - p·s, τ + (1 - p)·s] (float32 rounding slack only).
    eps = 1e-6
    assert float(scores.min()) >= tau - p * s - eps
    assert float(scores.max()) <= tau + (1 - p) * s + eps
    if 0 < below < n:
        kept = scores[scores >= tau]
        pruned = scores[scores < tau]
        tau32 = torch.tensor(tau, dtype=torch.float32)  # the comparison happens in float32
        assert bool(pruned.max() < tau32) and bool(kept.min() >= tau32)


def test_initial_scores_are_spread_uniformly():
    cfg = MaskConfig(init_sparsity=0.5)
    tau, s = cfg.threshold, cfg.init_scale
    scores = initial_scores((384, 384), cfg, name="x")
    kept, pruned = scores[scores >= tau], scores[scores < tau]
    # Stratified uniform draw: each side is uniform over its half of the range.
    assert abs(float(kept.mean()) - (tau + 0.25 * s)) < 0.01 * s
    assert abs(float(pruned.mean()) - (tau - 0.25 * s)) < 0.01 * s
    # The pruned positions are scattered over the matrix, not a block.
    rows_with_zeros = int(((scores < tau).sum(dim=1) > 0).sum())
    assert rows_with_zeros == 384


def test_initial_scores_other_threshold_and_scale():
    cfg = MaskConfig(init_sparsity=0.3, threshold=0.0, init_scale=1.0)
    scores = initial_scores((50, 40), cfg, name="a")
    assert int((scores < 0.0).sum()) == 600
    assert float(scores.min()) >= -0.3 - 1e-6 and float(scores.max()) <= 0.7 + 1e-6


def test_initial_scores_seeded_by_seed_and_name():
    a = initial_scores((64, 32), MaskConfig(seed=0), name="bert.encoder.layer.2.output.dense")
    b = initial_scores((64, 32), MaskConfig(seed=0), name="bert.encoder.layer.2.output.dense")
    c = initial_scores((64, 32), MaskConfig(seed=1), name="bert.encoder.layer.2.output.dense")
    d = initial_scores((64, 32), MaskConfig(seed=0), name="bert.encoder.layer.3.output.dense")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)
    # Different seeds also pick different pruned positions, not just different values.
    tau = MaskConfig().threshold
    assert not torch.equal(a < tau, c < tau)


def test_same_seed_gives_same_initial_masks_on_two_models(tiny_bert_config):
    from transformers import BertConfig

    m1 = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)
    m2 = build_model("tiny", "sequence", ["a", "b"], config=BertConfig(**tiny_bert_config.to_dict()))
    m3 = build_model("tiny", "sequence", ["a", "b"], config=BertConfig(**tiny_bert_config.to_dict()))
    mask_model(m1, MaskConfig(seed=7))
    mask_model(m2, MaskConfig(seed=7))
    mask_model(m3, MaskConfig(seed=8))
    b1, b2, b3 = binary_masks(m1), binary_masks(m2), binary_masks(m3)
    assert list(b1) == list(b2) == list(b3)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert any(not torch.equal(b1[k], b3[k]) for k in b1)


# --------------------------------------------------------------------------- STE gradient

def _small_layer(dtype=torch.float64):
    lin = nn.Linear(5, 4, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(20, dtype=dtype).view(4, 5) / 10 - 0.95)  # has negatives and no zeros
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4], dtype=dtype))
    scores = torch.tensor([[0.01, -0.02, 0.03, 0.004, 0.006],
                           [-0.01, 0.02, 0.005, 0.0049, 0.05],
                           [0.007, 0.008, -0.009, 0.01, 0.02],
                           [0.0, 0.1, 0.2, -0.3, 0.005]], dtype=dtype)
    return lin, scores


def test_straight_through_gradient_matches_hand_computation():
    lin, scores = _small_layer()
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    tau = 5e-3
    layer = MaskedLinear(lin, tau, scores=scores.clone())
    mask = (scores >= tau).to(scores.dtype)
    assert 0 < int(mask.sum()) < mask.numel()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    gy = torch.randn(3, 4, dtype=torch.float64, generator=g)
    y = layer(x)
    loss = (y * gy).sum()
    loss.backward()

    # By hand: y = x Ŵᵀ + b, L = Σ y ⊙ g  ⇒  ∂L/∂Ŵ = gᵀ x, and STE: ∂L/∂M = (∂L/∂Ŵ) ⊙ W.
    dW_hat = gy.T @ x.detach()
    expected = dW_hat * W
    assert layer.scores.grad is not None
    torch.testing.assert_close(layer.scores.grad, expected, rtol=1e-12, atol=1e-12)
    # Pruned positions get a gradient too (that is what lets them come back).
    pruned = mask == 0
    assert bool((layer.scores.grad[pruned] != 0).all())
    # The input gradient goes through the masked weight: ∂L/∂x = g Ŵ.
    torch.testing.assert_close(x.grad, gy @ (W * mask), rtol=1e-12, atol=1e-12)
    # Frozen weight and bias get nothing.
    assert layer.weight.grad is None and layer.bias.grad is None
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    # ... and they were not changed by the pass.
    assert torch.equal(layer.weight, W) and torch.equal(layer.bias, b)


def test_straight_through_gradient_on_3d_input():
    lin, scores = _small_layer()
    W = lin.weight.detach().clone()
    layer = MaskedLinear(lin, 5e-3, scores=scores.clone())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g)
    gy = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    (layer(x) * gy).sum().backward()
    expected = (gy.reshape(-1, 4).T @ x.reshape(-1, 5)) * W
    torch.testing.assert_close(layer.scores.grad, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- MaskedLinear forward

def test_forward_equals_linear_with_masked_weight():
    torch.manual_seed(0)
    lin = nn.Linear(13, 7)
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    cfg = MaskConfig(init_sparsity=0.4)
    layer = MaskedLinear(lin, cfg.threshold, scores=initial_scores(W.shape, cfg, "l"))
    mask = layer.mask()
    assert mask.dtype == torch.bool and int((~mask).sum()) == round(0.4 * 91)
    x = torch.randn(6, 13)
    out = layer(x)
    assert torch.equal(out, F.linear(x, W * mask, b))
    # And it is not simply the unmasked layer.
    assert not torch.allclose(out, F.linear(x, W, b))

    fixed = MaskedLinear(lin, cfg.threshold, fixed_mask=mask.clone())
    assert fixed.scores is None and fixed.fixed_mask.dtype == torch.bool
    assert torch.equal(fixed(x), out)
    assert fixed.weight is layer.weight and fixed.bias is layer.bias

    layer.freeze()
    assert layer.scores is None and torch.equal(layer.fixed_mask, mask)
    assert torch.equal(layer(x), out)


def test_half_precision_weight_keeps_fp32_scores():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4).to(torch.bfloat16)
    cfg = MaskConfig(init_sparsity=0.25)
    layer = MaskedLinear(lin, cfg.threshold, scores=initial_scores((4, 8), cfg, "h"))
    assert layer.scores.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.linear(x, lin.weight * layer.mask(), lin.bias))
    y.float().sum().backward()
    assert layer.scores.grad.dtype == torch.float32
    expected = (torch.ones(3, 4, dtype=torch.bfloat16).T @ x).float() * lin.weight.float()
    torch.testing.assert_close(layer.scores.grad, expected, rtol=1e-2, atol=1e-2)


def test_masked_linear_rejects_bad_arguments():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="exactly one"):
        MaskedLinear(lin, 0.0)
    with pytest.raises(ValueError, match="exactly one"):
        MaskedLinear(lin, 0.0, scores=torch.zeros(3, 4), fixed_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        MaskedLinear(lin, 0.0, scores=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape"):
        MaskedLinear(lin, 0.0, fixed_mask=torch.ones(3, 5, dtype=torch.bool))


def test_merged_gives_identical_outputs_and_restores(tiny_bert_config):
    model = build_model("tiny", "sequence", ["a", "b", "c"], config=tiny_bert_config)
    mask_model(model, MaskConfig(init_sparsity=0.3, blocks="all"))
    model.eval()
    layers = masked_layers(model)
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with merged(model) as m:
            assert m is model
            assert masked_layers(model) == {}
            for name, orig in layers.items():
                lin = model.get_submodule(name)
                assert type(lin) is nn.Linear
                assert torch.equal(lin.weight, orig.weight * orig.mask())
                assert lin.weight.data_ptr() != orig.weight.data_ptr()  # a new tensor, W untouched
            inside = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(inside, ref)
    assert torch.equal(after, ref)
    restored = masked_layers(model)
    assert list(restored) == list(layers)
    assert all(restored[n] is layers[n] for n in layers)
    assert all(torch.equal(restored[n].weight, weights[n]) for n in layers)


def test_merged_restores_on_error(tiny_bert_config):
    model = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)
    mask_model(model)
    layers = masked_layers(model)
    with pytest.raises(RuntimeError, match="boom"):
        with merged(model):
            raise RuntimeError("boom")
    assert masked_layers(model) == layers


def test_unmask_model_puts_original_weights_back(tiny_bert_config):
    model = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)
    before = {n: p for n, p in model.named_parameters()}
    mask_model(model)
    unmask_model(model)
    assert masked_layers(model) == {}
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    assert all(after[n] is before[n] for n in before)
    ids = torch.randint(0, 128, (2, 5))
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


# --------------------------------------------------------------------------- architecture maps
# Randomly initialised models of the true base shapes. They are built on the meta device:
# same modules, names and shapes, no weight memory (materialising 12 base-size models costs
# ~1.5-3 s each on this machine, and scoring all their masks ~6 s each).

def _true_config(arch: str):
    from transformers import BertConfig, DistilBertConfig, MPNetConfig, RobertaConfig

    if arch == "bert":
        return BertConfig()  # bert-base-uncased: 12 x 768, FFN 3072
    if arch == "roberta":
        return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                             layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if arch == "distilbert":
        return DistilBertConfig()  # distilbert-base: 6 x 768, FFN 3072
    if arch == "mpnet":
        return MPNetConfig()  # mpnet-base: 12 x 768, FFN 3072
    raise KeyError(arch)


NUM_BLOCKS = {"bert": 12, "roberta": 12, "distilbert": 6, "mpnet": 12}
PREFIX = {"bert": "bert", "roberta": "roberta", "distilbert": "distilbert", "mpnet": "mpnet"}
MODULE_PATHS = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "i": "intermediate.dense", "o": "output.dense"},
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
                   "ao": "attention.out_lin", "i": "ffn.lin1", "o": "ffn.lin2"},
    "mpnet": {"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
              "ao": "attention.attn.o", "i": "intermediate.dense", "o": "output.dense"},
}
MODULE_PATHS["roberta"] = MODULE_PATHS["bert"]
BLOCKS_PATH = {"bert": "encoder.layer", "roberta": "encoder.layer", "distilbert": "transformer.layer",
               "mpnet": "encoder.layer"}
# W_P (pooler / pre-classifier, when the head has one) and W_T (the classifier), per head.
HEAD_NAMES = {
    ("bert", "sequence"): ["bert.pooler.dense", "classifier"],
    ("bert", "tagging"): ["classifier"],
    ("bert", "choice"): ["bert.pooler.dense", "classifier"],
    ("roberta", "sequence"): ["classifier.dense", "classifier.out_proj"],
    ("roberta", "tagging"): ["classifier"],
    ("roberta", "choice"): ["roberta.pooler.dense", "classifier"],
    ("distilbert", "sequence"): ["pre_classifier", "classifier"],
    ("distilbert", "tagging"): ["classifier"],
    ("distilbert", "choice"): ["pre_classifier", "classifier"],
    ("mpnet", "sequence"): ["classifier.dense", "classifier.out_proj"],
    ("mpnet", "tagging"): ["classifier"],
    ("mpnet", "choice"): ["mpnet.pooler.dense", "classifier"],
}
ARCHS = ["bert", "roberta", "distilbert", "mpnet"]
TASKS = ["sequence", "tagging", "choice"]
LABELS = {"sequence": ["neg", "pos"], "tagging": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], "choice": ["0"]}
N_OUT = {"sequence": 2, "tagging": 5, "choice": 1}


@pytest.fixture(scope="module")
def true_shape_models():
    """(arch, task) → a builder of a fresh true-shape model on the meta device."""

    def build(arch: str, task: str):
        with torch.device("meta"):
            return build_model(f"random-{arch}-base", task, LABELS[task], config=_true_config(arch))

    return build


def _block_names(arch: str, blocks, modules=("q", "k", "v", "ao", "i", "o")) -> list[str]:
    return [f"{PREFIX[arch]}.{BLOCKS_PATH[arch]}.{b}.{MODULE_PATHS[arch][m]}" for b in blocks for m in modules]


def _linears(model) -> set[str]:
    """Linear layers by their name in the transformers model (the names mask files use)."""
    return {n for n, m in model.get_base_model().named_modules() if isinstance(m, (nn.Linear, MaskedLinear))}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_paper_preset_maps(true_shape_models, arch, task):
    model = true_shape_models(arch, task)
    L = NUM_BLOCKS[arch]
    assert model.config.model_type == arch
    # True shapes.
    q = model.get_submodule(_block_names(arch, [0], ["q"])[0])
    i = model.get_submodule(_block_names(arch, [0], ["i"])[0])
    assert tuple(q.weight.shape) == (768, 768) and tuple(i.weight.shape) == (3072, 768)
    assert len(model.base_model.get_submodule(BLOCKS_PATH[arch])) == L

    names = target_names(model, MaskConfig())
    expected = _block_names(arch, range(2, L)) + HEAD_NAMES[(arch, task)]
    assert names == expected
    assert len(names) == 6 * (L - 2) + len(HEAD_NAMES[(arch, task)])
    for b in range(2, L):
        assert sum(f".{BLOCKS_PATH[arch]}.{b}." in n for n in names) == 6
    # Every nn.Linear of the model is either masked or lives in blocks 0 and 1: nothing
    # in the selected blocks or in the head is left out.
    block0 = re.compile(rf"^{PREFIX[arch]}\.{re.escape(BLOCKS_PATH[arch])}\.[01]\.")
    unmasked = _linears(model) - set(names)
    assert all(block0.match(n) for n in unmasked), sorted(unmasked)
    assert len(unmasked) == 12
    # The classifier W_T is the output projection with the task's output width.
    assert model.get_submodule(names[-1]).out_features == N_OUT[task]


@pytest.mark.parametrize("arch", ARCHS)
def test_selection_options(true_shape_models, arch):
    model = true_shape_models(arch, "sequence")
    L, head = NUM_BLOCKS[arch], HEAD_NAMES[(arch, "sequence")]
    assert target_names(model, MaskConfig(modules=("q", "v"))) == _block_names(arch, range(2, L), ("q", "v")) + head
    assert target_names(model, MaskConfig(modules="v,q")) == _block_names(arch, range(2, L), ("v", "q")) + head
    assert target_names(model, MaskConfig(blocks="all")) == _block_names(arch, range(L)) + head
    assert target_names(model, MaskConfig(blocks="0,3")) == _block_names(arch, [0, 3]) + head
    assert target_names(model, MaskConfig(blocks="1,4-5")) == _block_names(arch, [1, 4, 5]) + head
    assert target_names(model, MaskConfig(blocks=[5, 0, 5])) == _block_names(arch, [0, 5]) + head
    assert target_names(model, MaskConfig(mask_pooler=False)) == _block_names(arch, range(2, L)) + head[-1:]
    assert target_names(model, MaskConfig(mask_classifier=False)) == _block_names(arch, range(2, L)) + head[:-1]
    q_path = MODULE_PATHS[arch]["q"]
    rx = MaskConfig(targets=re.escape(q_path) + "$")
    assert target_names(model, rx) == _block_names(arch, range(L), ("q",))  # replaces blocks and head


@pytest.mark.parametrize("arch", ARCHS)
def test_mask_model_swaps_exactly_the_selected_layers(true_shape_models, arch):
    model = true_shape_models(arch, "choice")
    before = dict(model.get_base_model().named_parameters())
    cfg = MaskConfig(modules=("q", "v"), blocks="0,3", mask_pooler=False)
    mask_model(model, cfg)
    layers = masked_layers(model)
    assert list(layers) == _block_names(arch, [0, 3], ("q", "v")) + ["classifier"]
    for name, layer in layers.items():
        assert layer.weight is before[f"{name}.weight"]
        assert layer.scores.shape == layer.weight.shape and layer.scores.requires_grad
    assert model.mask_configs["default"] is cfg and model.mask_config is cfg
    with pytest.raises(ValueError, match="already masked"):
        mask_model(model, cfg)


def test_mask_model_with_targets_regex(true_shape_models):
    model = true_shape_models("mpnet", "tagging")
    mask_model(model, MaskConfig(targets=r"layer\.(10|11)\.output\.dense$|^classifier$"))
    assert list(masked_layers(model)) == ["mpnet.encoder.layer.10.output.dense",
                                          "mpnet.encoder.layer.11.output.dense", "classifier"]


@pytest.mark.parametrize("arch", ["gpt2", "electra"])
def test_unknown_architecture_needs_targets(arch):
    from transformers import AutoModelForSequenceClassification, ElectraConfig, GPT2Config

    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, num_labels=2,
                         pad_token_id=0)
    else:
        cfg = ElectraConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(cfg)
    with pytest.raises(ModelError) as ei:
        mask_model(model)
    msg = str(ei.value)
    assert arch in msg
    for supported in ("bert", "distilbert", "mpnet", "roberta"):
        assert supported in msg
    assert "targets" in msg
    assert masked_layers(model) == {}
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen on failure


def test_unknown_architecture_with_targets_works():
    from transformers import AutoModelForSequenceClassification, ElectraConfig

    cfg = ElectraConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(cfg)
    mask_model(model, MaskConfig(targets=r"(query|value)$|classifier\.out_proj$"))
    assert list(masked_layers(model)) == [
        "electra.encoder.layer.0.attention.self.query", "electra.encoder.layer.0.attention.self.value",
        "electra.encoder.layer.1.attention.self.query", "electra.encoder.layer.1.attention.self.value",
        "classifier.out_proj"]
    out = model(input_ids=torch.randint(0, 64, (2, 7))).logits
    out.sum().backward()
    assert all(m.scores.grad is not None for m in masked_layers(model).values())


def test_supported_architectures_have_all_six_modules():
    for name, arch in ARCHITECTURES.items():
        assert set(arch.modules) == set(maskfit.masking.ALL_MODULES), name


# --------------------------------------------------------------------------- freezing and sharing

def test_only_scores_train_and_weights_are_shared():
    wrapper = build_model("minilm", "sequence", ["neg", "pos"])
    model = wrapper.get_base_model()  # parameter names as in transformers (and in mask files)
    params_before = dict(model.named_parameters())
    ptr_before = {n: p.data_ptr() for n, p in params_before.items()}
    bytes_before = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    n_before = len(list(model.parameters()))

    mask_model(wrapper)
    layers = masked_layers(wrapper)
    # Paper preset on MiniLM (6 blocks): blocks 2-5 x 6 linears + pooler + classifier.
    assert len(layers) == 4 * 6 + 2
    assert list(layers)[-2:] == ["bert.pooler.dense", "classifier"]

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.scores" for n in layers]
    params_after = dict(model.named_parameters())
    for n, p in params_before.items():
        assert params_after[n] is p, n  # the very same tensor objects
        assert p.data_ptr() == ptr_before[n]
        assert not p.requires_grad
    for name, layer in layers.items():
        assert layer.weight is params_before[f"{name}.weight"]
        assert layer.bias is params_before[f"{name}.bias"]
    # Memory added = the scores, nothing else.
    scores_bytes = sum(m.scores.numel() * m.scores.element_size() for m in layers.values())
    assert scores_bytes == sum(m.weight.numel() * 4 for m in layers.values())
    bytes_after = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    assert bytes_after - bytes_before == scores_bytes
    assert len(list(model.parameters())) == n_before + len(layers)
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert len(ptrs) == n_before + len(layers)  # no hidden copies


# --------------------------------------------------------------------------- config validation

@pytest.mark.parametrize("kwargs, match", [
    ({"init_sparsity": 1.5}, r"init_sparsity must be in \[0, 1\], got 1.5"),
    ({"init_sparsity": -0.01}, "init_sparsity"),
    ({"init_scale": 0.0}, "init_scale must be > 0"),
    ({"modules": ("q", "query")}, r"unknown module\(s\) \['query'\]; choose from q, k, v, ao, i, o"),
    ({"modules": "q,ffn"}, "unknown module"),
    ({"blocks": "2-"}, "bad block spec '2-'"),
    ({"blocks": "a,b"}, "bad block spec"),
    ({"blocks": "5-3"}, "bad block range '5-3'"),
    ({"targets": "layer.(1"}, "targets is not a valid regular expression"),
])
def test_bad_config_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskConfig(**kwargs)


@pytest.mark.parametrize("blocks", ["0,4", "3-9", [0, -1]])
def test_blocks_out_of_range(tiny_bert_config, blocks):
    model = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)  # 4 blocks
    with pytest.raises(ValueError, match=r"out of range for a model with 4 blocks \(0-3\)"):
        mask_model(model, MaskConfig(blocks=blocks))
    assert masked_layers(model) == {}


def test_targets_that_select_nothing(tiny_bert_config):
    model = build_model("tiny", "sequence", ["a", "b"], config=tiny_bert_config)
    with pytest.raises(ValueError, match="selects no nn.Linear"):
        mask_model(model, MaskConfig(targets="no_such_layer"))


def test_config_round_trips_through_dict():
    cfg = MaskConfig(init_sparsity=0.1, blocks="0,3", modules=("q", "v"), targets=None, seed=3)
    d = cfg.to_dict()
    assert d["modules"] == ["q", "v"]
    assert MaskConfig.from_dict(d) == cfg
    assert MaskConfig.from_dict({**d, "unknown_future_key": 1}) == cfg


# --------------------------------------------------------------------------- LoRA targets (method lora)

LORA_LEAVES = {"bert": {"query", "value"}, "roberta": {"query", "value"}, "distilbert": {"q_lin", "v_lin"},
               "mpnet": {"q", "v"}}
LORA_HEAD = {"bert": ["classifier"], "roberta": ["classifier"], "distilbert": ["pre_classifier", "classifier"],
             "mpnet": ["classifier"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_follow_the_architecture_maps(true_shape_models, arch):
    """--lora-targets q,v puts adapters on the query and value linears of every block (and nowhere in
    the head, which trains whole through modules_to_save), whatever the architecture calls them."""
    pytest.importorskip("peft")
    from maskfit.lora import add_lora, lora_config

    model = true_shape_models(arch, "sequence")
    cfg = lora_config(model, r=8, targets=("q", "v"))
    assert cfg.modules_to_save == LORA_HEAD[arch]
    add_lora(model, cfg)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.get_base_model().named_parameters() if ".lora_A." in n}
    assert len(adapted) == 2 * NUM_BLOCKS[arch]
    assert {n.rsplit(".", 1)[-1] for n in adapted} == LORA_LEAVES[arch]
    assert all(f".{BLOCKS_PATH[arch]}." in n for n in adapted)
