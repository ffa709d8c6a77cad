from __future__ import annotations

import esm
import pytest
import torch

from protssl.alphabet import ALPHABET
from protssl.checkpoint import encoder_from_fair_esm
from protssl.model import PRESETS, ModelConfig, ProteinEncoder, init_weights, resolve_dtype


def _fair_esm_pair(config: ModelConfig) -> tuple[esm.model.esm2.ESM2, ProteinEncoder]:
    torch.manual_seed(0)
    reference = esm.model.esm2.ESM2(
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        attention_heads=config.attention_heads,
        alphabet=ALPHABET,
        token_dropout=config.token_dropout,
    ).eval()
    for p in reference.parameters():  # fair-esm initialises biases to zero; make them count
        p.data.add_(0.02 * torch.randn_like(p))
    ours = encoder_from_fair_esm(reference.state_dict(), config).eval()
    return reference, ours


def _mixed_batch(sample_fasta) -> torch.Tensor:
    from protssl.fasta import read_fasta

    records = [r for r in read_fasta(sample_fasta) if len(r) < 300][:6]
    converter = ALPHABET.get_batch_converter()
    _, _, tokens = converter([(r.id, r.sequence) for r in records])
    return tokens


def test_parity_with_fair_esm_fp32_mixed_lengths(sample_fasta) -> None:
    config = PRESETS["esm2-8m"]
    reference, ours = _fair_esm_pair(config)
    tokens = _mixed_batch(sample_fasta)
    tokens[0, 5] = ALPHABET.mask_idx  # token-dropout rescaling takes part
    layers = list(range(config.num_layers + 1))
    with torch.no_grad():
        expected = reference(tokens, repr_layers=layers)
        got = ours(tokens, layers)
    for layer in layers:
        pad = tokens.eq(ALPHABET.padding_idx)
        diff = (expected["representations"][layer] - got.representations[layer])[~pad]
        assert diff.abs().max().item() <= 1e-4, layer
    assert (expected["logits"] - got.logits).abs().max().item() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_path_matches_the_training_path(sample_fasta, dtype) -> None:
    """Without autograd the linears run fused where the dtype's probe passed; with it, as F.linear.

    On a CPU without bf16 the bf16 probe fails and both paths are torch's (tests/test_hardware.py).
    """
    _, ours = _fair_esm_pair(PRESETS["esm2-8m"])
    ours = ours.to(dtype)
    tokens = _mixed_batch(sample_fasta)
    with torch.no_grad():
        fused = ours(tokens, (6,)).representations[6]
    eager = ours(tokens, (6,)).representations[6].detach()
    keep = ~tokens.eq(ALPHABET.padding_idx)
    diff = (fused - eager)[keep].float().abs()
    scale = eager[keep].float().abs().max().item()
    assert diff.max().item() <= (1e-4 if dtype == torch.float32 else 0.02 * scale)
    cos = torch.nn.functional.cosine_similarity(fused[keep].float(), eager[keep].float(), dim=-1)
    assert cos.min().item() >= (0.99999 if dtype == torch.float32 else 0.999)


def test_training_attention_runs_in_float32_under_cpu_autocast() -> None:
    """Training keeps bf16 matmuls but runs SDPA (and its slow bf16 backward) in float32."""
    from protssl.kernels import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 33, 16, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 33, dtype=torch.bool)
    mask[1, ..., 30:] = False
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = attention(q, k, v, mask)
        with torch.no_grad():
            inferred = attention(q, k, v, mask)
    assert trained.dtype == torch.float32 and torch.equal(trained, want)
    assert inferred.dtype == torch.bfloat16
    torch.testing.assert_close(inferred.float(), want.detach(), atol=0.05, rtol=0.05)
    trained.sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Regression weights not found")
def test_export_round_trip_loads_in_fair_esm(tmp_path, sample_fasta) -> None:
    from protssl.checkpoint import export_fair_esm

    config = ModelConfig(num_layers=2, embed_dim=64, attention_heads=4, ffn_dim=256)
    ours = ProteinEncoder(config)
    init_weights(ours, seed=3)
    path = tmp_path / "esm2_t2_test.pt"
    export_fair_esm(ours, path)
    data = torch.load(path, map_location="cpu", weights_only=False)
    reference, _ = esm.pretrained.load_model_and_alphabet_core("esm2_t2_test", data, None)
    tokens = _mixed_batch(sample_fasta)
    with torch.no_grad():
        expected = reference.eval()(tokens, repr_layers=[2])["representations"][2]
        got = ours.eval()(tokens, (2,)).representations[2]
    keep = ~tokens.eq(ALPHABET.padding_idx)
    assert (expected - got)[keep].abs().max().item() <= 1e-4


def test_forward_stops_early_without_logits() -> None:
    model = ProteinEncoder(ModelConfig(num_layers=3, embed_dim=32, attention_heads=2, ffn_dim=64))
    tokens = torch.tensor([[0, 5, 6, 7, 2]])
    out = model(tokens, (1,), return_logits=False)
    assert out.logits is None and set(out.representations) == {1}
    assert model.resolve_layer(-1) == 3 and model.resolve_layer(0) == 0
    with pytest.raises(Exception, match="layer"):
        model.resolve_layer(4)


def test_config_checks_and_dtype_resolution() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(embed_dim=30, attention_heads=4)
    assert resolve_dtype("float32", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert ModelConfig.from_dict(PRESETS["esm2-35m"].to_dict()) == PRESETS["esm2-35m"]


def test_matmul_rows_keep_few_shapes_and_little_padding() -> None:
    from protssl.kernels import matmul_rows

    cpu = torch.device("cpu")
    grid = [matmul_rows(n, cpu) for n in range(1, 8193)]
    assert all(g >= n for n, g in zip(range(1, 8193), grid, strict=True))
    assert all(g <= max(n * 1.125, n + 7) for n, g in zip(range(1, 8193), grid, strict=True))
    assert len(set(grid[:4096])) <= 64  # batches of up to 4096 tokens: a few dozen matmul shapes
    assert matmul_rows(3850, torch.device("meta")) == 3850  # only the CPU pads


def test_warm_up_runs_one_forward_per_matmul_shape() -> None:
    from protssl.kernels import matmul_rows

    model = ProteinEncoder(PRESETS["protssl-tiny"]).eval()
    cpu = torch.device("cpu")
    expected = len({matmul_rows(n, cpu) for n in range(8, 2049, 8)})
    assert model.warm_up(2048) == expected
    assert model.warm_up(8) == 1


def test_inference_projection_follows_weight_updates(sample_fasta) -> None:
    """No-grad forwards follow in-place weight updates (as an optimizer's): nothing stale is kept."""
    _, ours = _fair_esm_pair(PRESETS["esm2-8m"])
    tokens = _mixed_batch(sample_fasta)
    keep = ~tokens.eq(ALPHABET.padding_idx)
    with torch.no_grad():
        before = ours(tokens, (6,)).representations[6]
        for layer in ours.layers:
            layer.self_attn.qkv_proj.weight.mul_(1.5)  # in place, as an optimizer step
        after = ours(tokens, (6,)).representations[6]
    eager = ours(tokens, (6,)).representations[6].detach()  # autograd on: nothing kept
    assert (after - before)[keep].abs().max().item() > 1e-2
    assert (after - eager)[keep].abs().max().item() <= 1e-4


def test_a_model_built_under_inference_mode_runs() -> None:
    with torch.inference_mode():
        model = ProteinEncoder(PRESETS["protssl-tiny"]).eval()
        out = model(torch.tensor([[0, 5, 6, 7, 2]]), (2,), return_logits=False)
    assert out.representations[2].shape == (1, 5, 64)
