"""The families beyond Llama, end to end against transformers.

Each case is a random-weight checkpoint of one family saved by transformers (tiny shapes, weights
with std 0.15 so logits spread like a trained model's, norms and biases randomised), converted by
lmpack and compared with transformers' float32 forward over the same numbers: logits at 48
positions (beyond every sliding window), greedy ids, a bf16 file against the rounded weights, a
q8_0 file within the Llama KL bounds, every kernel table at several thread counts, and `verify
--against` on the good file and on a perturbed twin. Each case also checks that its feature
matters: switching it off in transformers moves the logits far beyond the tolerance.
"""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

import checkpoints

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import lmpack  # noqa: E402
from lmpack import _core  # noqa: E402
from lmpack.convert.hf import config_from_hf  # noqa: E402
from lmpack.errors import LmpackError  # noqa: E402
from lmpack.runtime.sampler import Sampler  # noqa: E402
from lmpack.verify import verify  # noqa: E402
from kernel_tables import using_kernels  # noqa: E402
from test_q8_accuracy import MAX_KL_BOUND, MEAN_KL_BOUND, TOP1_BOUND, kl  # noqa: E402

F32_TOL = 1e-4
HALF_TOL = 1e-3
SEQ_LEN = 48


def _no_window(model):
    model.config.sliding_window = None


def _no_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()


def _all_full(model):
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    model.model.has_sliding_layers = False
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
        layer.attention_type = "full_attention"


def _unit_qk_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(1.0)


def _no_softcaps(model):
    model.config.final_logit_softcapping = None
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None


def _full_rotary(model):
    """Phi-3 with RoPE over whole heads: the inv_freq of the full head_dim, in place."""
    rot = model.model.rotary_emb
    hd = model.config.hidden_size // model.config.num_attention_heads
    theta = model.config.rope_parameters["rope_theta"]
    rot.inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)


def _top1_routing(model):
    for module in model.modules():
        if type(module).__name__ == "MixtralTopKRouter":
            module.top_k = 1
    for module in model.modules():
        if hasattr(module, "top_k") and type(module).__name__ == "MixtralSparseMoeBlock":
            module.top_k = 1


def _local_rope_as_global(model):
    rot = model.model.rotary_emb
    rot.sliding_attention_inv_freq.copy_(rot.full_attention_inv_freq)


GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
               "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}


# id -> (model_type, checkpoint kwargs, ablate(model): switch the family's feature off in a
# copy of the transformers model, perturb: what the verify twin changes ("config", {...}) or
# ("tensor", name, scale)).
CASES = {
    "mistral-window16-headdim64": (
        "mistral", dict(sliding_window=16, head_dim=64), _no_window, ("config", {"sliding_window": 8})),
    "mistral-nowindow-tied-bf16": (
        "mistral", dict(sliding_window=None, tie=True, dtype="bfloat16"), None,
        ("tensor", "model.layers.1.self_attn.k_proj.weight", 1.1)),
    "qwen2-biases-tied": (
        "qwen2", dict(tie=True), _no_biases, ("tensor", "model.layers.0.self_attn.k_proj.bias", 1.5)),
    "qwen2-window16-on-layer1-bf16": (
        "qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1, dtype="bfloat16"), _all_full,
        ("config", {"max_window_layers": 0, "layer_types": ["sliding_attention"] * 2})),
    "qwen3-qknorm-headdim64": (
        "qwen3", dict(head_dim=64), _unit_qk_norms, ("tensor", "model.layers.1.self_attn.q_norm.weight", 0.8)),
    "qwen3-tied-window16-bf16": (
        "qwen3", dict(head_dim=32, tie=True, use_sliding_window=True, sliding_window=16, max_window_layers=0,
                      dtype="bfloat16"), _all_full, ("tensor", "model.layers.0.self_attn.k_norm.weight", 1.2)),
    # Gemma 2's defaults cap scores at 50 and logits at 30: too loose to matter on these tiny
    # models, so the caps here are small enough to bend them.
    "gemma2-softcaps-window16": (
        "gemma2", dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                       final_logit_softcapping=3.0, tie=True), _no_softcaps,
        ("tensor", "model.layers.0.post_feedforward_layernorm.weight", 1.3)),
    "gemma2-untied-bf16": (
        "gemma2", dict(head_dim=64, sliding_window=8, num_hidden_layers=3, dtype="bfloat16"), _all_full,
        ("config", {"query_pre_attn_scalar": 64})),
    "olmo2-postnorm-qknorm": (
        "olmo2", dict(), _unit_qk_norms, ("tensor", "model.layers.0.self_attn.k_norm.weight", 0.7)),
    "olmo2-mqa-tied-bf16": (
        "olmo2", dict(num_key_value_heads=1, tie=True, dtype="bfloat16"), None,
        ("tensor", "model.layers.1.post_attention_layernorm.weight", 1.2)),
    "phi3-partial-rotary-window16": (
        "phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                     sliding_window=16), _full_rotary,
        ("tensor", "model.layers.0.self_attn.qkv_proj.weight", 1.1)),
    "phi3-tied-bf16": (
        "phi3", dict(tie=True, dtype="bfloat16", num_key_value_heads=4), None,
        ("tensor", "model.layers.1.mlp.gate_up_proj.weight", 0.9)),
    "mixtral-4experts-top2": (
        "mixtral", dict(num_local_experts=4, num_experts_per_tok=2), _top1_routing,
        ("tensor", "model.layers.1.block_sparse_moe.experts.2.w3.weight", 1.2)),
    "mixtral-8experts-top3-window16-bf16": (
        "mixtral", dict(num_local_experts=8, num_experts_per_tok=3, sliding_window=16, intermediate_size=96,
                        dtype="bfloat16"), _top1_routing,
        ("tensor", "model.layers.0.block_sparse_moe.gate.weight", 1.3)),
    "gemma3-local-global-rope": (
        "gemma3_text", dict(head_dim=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                            rope_parameters=GEMMA3_ROPE, query_pre_attn_scalar=32, tie=True),
        _local_rope_as_global, ("tensor", "model.layers.1.self_attn.q_norm.weight", 1.5)),
    "gemma3-qknorm-bf16": (
        "gemma3_text", dict(head_dim=64, sliding_window=8, num_hidden_layers=3, dtype="bfloat16",
                            layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
        _unit_qk_norms, ("config", {"rope_parameters": {**GEMMA3_ROPE, "sliding_attention": {
            "rope_type": "default", "rope_theta": 5000.0}}})),
}


def token_ids(vocab: int, n: int = SEQ_LEN, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1] + rng.integers(0, vocab, size=n - 1).tolist()


def rel_err(got, ref) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / ref.std())


@pytest.fixture(params=list(CASES))
def case(request, family_checkpoint):
    model_type, kwargs, ablate, perturb = CASES[request.param]
    return request.param, family_checkpoint(model_type, **kwargs), ablate, perturb


def logits_of(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def test_logits_match_transformers(case, converted):
    name, ck, ablate, _ = case
    ids = token_ids(ck.vocab_size)
    ref = ck.reference_logits(ids)
    assert ref.std() > 0.5, "reference logits too flat for the tolerance to mean anything"
    got = lmpack.load(converted(ck)).logits(ids)
    tol = F32_TOL if ck.dtype == "float32" else HALF_TOL  # bf16 values are exact in the file
    assert rel_err(got, ref) < tol, name
    if ablate is not None:  # the feature matters: without it transformers is far off
        off = copy.deepcopy(ck.model)
        ablate(off)
        assert rel_err(logits_of(off, ids), ref) > 100 * tol


def test_bf16_file_matches_rounded_weights(case, converted):
    name, ck, _, _ = case
    ids = token_ids(ck.vocab_size, seed=2)
    rounded = checkpoints.rounded_reference(ck.model, "bf16")
    with torch.no_grad():  # a MoE router keeps its source precision in a cast file (routing flips otherwise)
        exact = dict(ck.model.named_parameters())
        for pname, p in rounded.named_parameters():
            if pname.endswith("mlp.gate.weight") or pname.endswith("block_sparse_moe.gate.weight"):
                p.copy_(exact[pname])
    ref = logits_of(rounded, ids)
    assert rel_err(lmpack.load(converted(ck, "bf16")).logits(ids), ref) < HALF_TOL, name


def test_greedy_ids_match_transformers(case, converted):
    name, ck, _, _ = case
    prompt = token_ids(ck.vocab_size, n=12, seed=3)
    m = lmpack.load(converted(ck), threads=2)
    mine = []
    for piece in m.continue_from(prompt, 0, Sampler(0.0, 1.0, None), 30, generated=mine):
        pass
    want = ck.reference_greedy(prompt, 30)
    assert mine[:len(want)] == want, name


# A MoE token whose router sits near a tie between its k-th and (k+1)-th expert can switch
# expert under any rounding upstream: transformers itself on the same q8_0-rounded weights shows
# such jumps (max KL 0.1-0.7 on these models). The mean and top-1 bounds are Llama's; a single
# position may go up to this.
MOE_MAX_KL_BOUND = 0.3


def test_q8_0_within_llama_kl_bounds(case, converted):
    name, ck, _, _ = case
    ids = [1] + [int(i) for i in np.random.default_rng(7).integers(3, ck.vocab_size, 63)]
    ref, got = ck.reference_logits(ids), lmpack.load(converted(ck, "q8_0"), threads=2).logits(ids)
    k = kl(ref, got)
    max_bound = MOE_MAX_KL_BOUND if "num_local_experts" in ck.model.config.to_dict() else MAX_KL_BOUND
    assert k.mean() <= MEAN_KL_BOUND and k.max() <= max_bound, (name, k.mean(), k.max())
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= TOP1_BOUND


@pytest.mark.parametrize("dtype", ["auto", "q8_0"])
def test_every_kernel_table_and_thread_count(case, converted, dtype):
    """Each kernel table matches transformers (f32: within tolerance; q8_0: within the KL bound),
    and gives bit-identical logits at 1, 2 and 3 threads."""
    name, ck, _, _ = case
    ids = token_ids(ck.vocab_size, seed=4)
    ref = ck.reference_logits(ids)
    path = converted(ck, dtype)
    for table in _core.kernel_paths():
        with using_kernels(table):
            outs = [lmpack.load(path, threads=t).logits(ids) for t in (1, 2, 3)]
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"{name} {table}")
        np.testing.assert_array_equal(outs[0], outs[2], err_msg=f"{name} {table}")
        if dtype == "q8_0":
            assert kl(ref, outs[0]).mean() <= MEAN_KL_BOUND, (name, table)
        else:
            assert rel_err(outs[0], ref) < (F32_TOL if ck.dtype == "float32" else HALF_TOL), (name, table)


def _twin(src, dst, perturb):
    """A copy of checkpoint folder `src` with one thing changed: a config field or a tensor's scale."""
    shutil.copytree(src, dst)
    if perturb[0] == "config":
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(perturb[1])
        (dst / "config.json").write_text(json.dumps(cfg))
    else:
        from safetensors.torch import load_file, save_file

        sd = load_file(dst / "model.safetensors")
        sd[perturb[1]] = (sd[perturb[1]].float() * perturb[2]).to(sd[perturb[1]].dtype)
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("dtype", ["auto", "q8_0"])
def test_verify_against_source_and_perturbed_twin(case, converted, tmp_path, dtype):
    name, ck, _, perturb = case
    good = converted(ck, dtype)
    result = verify(good, against=ck.path, max_tokens=64)
    assert result.ok, (name, result.failures())
    bad = verify(good, against=_twin(ck.path, tmp_path / "twin", perturb), max_tokens=64)
    assert not bad.ok, name
    failed = {n for n, c in bad.checks.items() if c.status == "fail"}
    assert ("config" if perturb[0] == "config" else "tensors") in failed, failed


# ---- refusals ----------------------------------------------------------------------------------

BASE_HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, vocab_size=64)


@pytest.mark.parametrize("model_type,change,match", [
    ("mistral", dict(hidden_act="gelu"), "model_type 'mistral': hidden_act 'gelu'"),
    ("mistral", dict(attention_bias=True), "model_type 'mistral': attention_bias=true"),
    ("mistral", dict(sliding_window=-4), "sliding_window"),
    ("mistral", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "model_type 'mistral': rope scaling type 'yarn' is not"),
    ("qwen2", dict(hidden_act="gelu"), "model_type 'qwen2': hidden_act 'gelu'"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, layer_types=["chunked_attention"] * 2),
     "model_type 'qwen2': layer type 'chunked_attention'"),
    ("qwen3", dict(attention_bias=True), "model_type 'qwen3': attention_bias=true"),
    ("gemma2", dict(hidden_activation="gelu"), "model_type 'gemma2': hidden_act 'gelu'"),
    ("gemma3_text", dict(use_bidirectional_attention=True), "model_type 'gemma3_text': use_bidirectional_attention"),
    ("gemma3_text", dict(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 8.0}}),
     "model_type 'gemma3_text': rope scaling type 'yarn'"),
    ("olmo2", dict(attention_bias=True), "model_type 'olmo2': attention_bias=true"),
    ("phi3", dict(rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}),
     "model_type 'phi3': rope scaling type 'longrope' is not supported"),
    ("phi3", dict(rope_scaling={"type": "su", "short_factor": [1.0], "long_factor": [2.0]}),
     "model_type 'phi3': rope scaling type 'su' is not supported"),
    ("mixtral", dict(num_local_experts=1, num_experts_per_tok=1), "n_experts must be in"),
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=5), "n_experts_used"),
    ("falcon", dict(), "unsupported model_type 'falcon'"),
])
def test_unsupported_features_are_refused(model_type, change, match):
    with pytest.raises(LmpackError, match=match) as e:
        config_from_hf({**BASE_HF, "model_type": model_type, **change}, "config.json")
    assert "\n" not in str(e.value)


def test_refusal_on_the_command_line(family_checkpoint, tmp_path, run_lmpack):
    ck = family_checkpoint("mistral", sliding_window=16, head_dim=64)
    src = shutil.copytree(ck.path, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["hidden_act"] = "relu"
    (src / "config.json").write_text(json.dumps(cfg))
    r = run_lmpack("convert", src, "-o", tmp_path / "out.lmp")
    assert r.returncode != 0 and not (tmp_path / "out.lmp").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "model_type 'mistral'" in lines[0], r.stderr


def test_phi3_fused_tensors_are_split_as_row_views(family_checkpoint):
    """qkv_proj and gate_up_proj reach the file as q/k/v and gate/up, each a row range viewed in
    the source's map (no copy of the fused tensor), holding exactly the fused tensor's rows."""
    from safetensors.numpy import load_file

    from lmpack.convert.detect import open_source

    ck = family_checkpoint("phi3", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5}, sliding_window=16)
    raw = load_file(ck.path / "model.safetensors")
    src = open_source(ck.path)
    try:
        names = [s.name for s in src.tensor_specs()]
        assert not any("qkv_proj" in n or "gate_up_proj" in n for n in names)
        q, k, v = (src.load(f"model.layers.1.self_attn.{p}_proj.weight") for p in "qkv")
        gate, up = (src.load(f"model.layers.1.mlp.{p}_proj.weight") for p in ("gate", "up"))
        assert not q.flags.owndata and not up.flags.owndata  # views of the map
        np.testing.assert_array_equal(np.concatenate([q, k, v]), raw["model.layers.1.self_attn.qkv_proj.weight"])
        np.testing.assert_array_equal(np.concatenate([gate, up]), raw["model.layers.1.mlp.gate_up_proj.weight"])
        assert q.shape == (128, 128) and k.shape == v.shape == (64, 128) and gate.shape == (320, 128)
    finally:
        src.close()


def test_mixtral_reads_only_the_chosen_experts(family_checkpoint, converted, tmp_path):
    """Expert 3 of layer 0 poisoned with NaN: a token that routes elsewhere must give exactly the
    clean file's logits (its forward step never touched those rows), one that routes there NaN;
    both kinds occur. The router file stays in its source precision under q8_0."""
    ck = family_checkpoint("mixtral", num_local_experts=4, num_experts_per_tok=2)
    clean = converted(ck)
    name = "model.layers.0.block_sparse_moe.experts.3.w1.weight"
    _, header = checkpoints.read_lmp_raw(clean)
    e = next(t for t in header["tensors"] if t["name"] == name)
    data = bytearray(clean.read_bytes())
    data[e["offset"]:e["offset"] + e["nbytes"]] = np.full(e["nbytes"] // 4, np.nan, np.float32).tobytes()
    crc = f"{checkpoints.crc32c_py(data[e['offset']:e['offset'] + e['nbytes']]):08x}"
    (tmp_path / "raw.lmp").write_bytes(bytes(data))

    def fix(h):
        next(t for t in h["tensors"] if t["name"] == name)["crc32c"] = crc

    poisoned = checkpoints.write_lmp_with_header(tmp_path / "raw.lmp", tmp_path / "poisoned.lmp", fix)
    good, bad = lmpack.load(clean, threads=2), lmpack.load(poisoned, threads=2)
    same = nan = 0
    for token in range(ck.vocab_size):
        a, b = good.logits([token]), bad.logits([token])
        if np.isnan(b).any():
            nan += 1
        else:
            np.testing.assert_array_equal(a, b)
            same += 1
    assert same > 0 and nan > 0, (same, nan)
    q8 = lmpack.load(converted(ck, "q8_0"))
    dtypes = {t.name: t.dtype for t in q8._reader.tensors}
    assert dtypes["model.layers.0.block_sparse_moe.gate.weight"] == "f32"
    assert dtypes["model.layers.0.block_sparse_moe.experts.0.w1.weight"] == "q8_0"


@pytest.mark.parametrize("model_type,kwargs", [
    ("mistral", dict(sliding_window=16, head_dim=64)),
    ("gemma3_text", dict(head_dim=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                         rope_parameters=GEMMA3_ROPE, query_pre_attn_scalar=32, tie=True)),
], ids=["mistral", "gemma3"])
def test_sliding_layers_keep_a_ring_cache(model_type, kwargs, family_checkpoint, converted):
    """A sliding layer's cache holds window + CHUNK - 1 rows (CHUNK: tokens per pass), reused round
    the ring: positions past the ring twice over (prompt chunks and single tokens alike) still give
    transformers' logits, and a run may go back at most CHUNK positions."""
    C = _core.CHUNK
    n = 2 * (16 + C)  # window 16: past the ring of 16 + C - 1 rows twice
    ck = family_checkpoint(model_type, **kwargs)
    ids = token_ids(ck.vocab_size, n=n, seed=5)
    ref = ck.reference_logits(ids)
    m = lmpack.load(converted(ck), threads=2, max_context=n + 56)
    full = m.logits(ids)
    assert rel_err(full, ref) < F32_TOL
    split = n - 50
    rows = [m.forward(ids[:split], 0, all_logits=True)]
    rows += [m.forward([t], split + i) for i, t in enumerate(ids[split:])]
    assert rel_err(np.concatenate(rows), ref) < F32_TOL
    # going back CHUNK positions re-runs them over the window still in the ring
    np.testing.assert_array_equal(m.forward(ids[n - C:], n - C, all_logits=True), full[n - C:])
    with pytest.raises(LmpackError, match="sliding-window cache"):
        m.forward(ids[n - C - 1:], n - C - 1)
    with pytest.raises(LmpackError, match="sliding-window cache"):
        m.forward([5], n + 1)  # past what was written
    np.testing.assert_array_equal(m.logits(ids[:20]), full[:20])  # position 0 always starts afresh
