"""Structured pruning of a Llama teacher into a smaller Llama student (MiniMA's initialisation).

MiniMA (``zhang2025minima``) initialises its 3B student by structured pruning of the 7B teacher
and then distils it. The authors' code (GeneZC/MiniMA, ``minima/run_sparsification_llama.py``,
``minima/modules/modeling_sparsellama.py``, ``minima/run_converting_llama.py``) does:

1. put all-ones masks on every attention head (on its attention output), every FFN channel
   (on ``act(gate(x)) * up(x)``) and every hidden channel (on the residual stream, one mask shared
   by all layers), run the teacher's language-modelling loss on a little pre-training text, and
   score each structure by the gradient magnitude :math:`I = \\mathbb{E}_{\\text{batch}}\\,
   |\\partial \\mathcal{L} / \\partial m|` (the head-importance score of Michel et al. 2019);
2. keep, in every layer, the same number of most important heads and FFN channels, and one set of
   most important hidden channels for the whole model (embeddings, norms, every projection and
   the LM head; the head size is never cut);
3. drop whole layers by position: equal numbers from the bottom and the top, keeping the middle
   block (``layers[d:-d]``; LLaMA2-7B 32/4096/32 heads/11008 → MiniMA-3B 24/3072/24/8192).

`prune_llama` follows that algorithm with three importance scores: ``"gradient"`` is the
paper's; ``"magnitude"`` (weight norms, needs no data) and ``"activation"`` (mean output size
on calibration data times the outgoing weight norm, as in Wanda/FLAP) are cheaper stand-ins. The
per-layer L2 normalisation of the official code does not change a per-layer top-k, so it is
omitted. With nothing pruned the student is an exact copy of the teacher; otherwise RMSNorm
averages over fewer channels, which the subsequent distillation has to absorb (as in the paper).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from reference_impls.core.models import count_parameters

Importance = Literal["magnitude", "activation", "gradient"]
IMPORTANCE_SCORES: tuple[str, ...] = ("magnitude", "activation", "gradient")
PreHook = Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]


@dataclass(frozen=True)
class Selection:
    """What the student keeps, as sorted teacher indices.

    Attributes:
        layers: Kept decoder layers.
        hidden: Kept residual-stream channels (shared by every layer).
        kv_heads: Per kept layer, the kept key/value heads.
        heads: Per kept layer, the kept query heads (grouped by their key/value head).
        neurons: Per kept layer, the kept FFN channels.
    """

    layers: list[int]
    hidden: Tensor
    kv_heads: list[Tensor]
    heads: list[Tensor]
    neurons: list[Tensor]


@dataclass(frozen=True)
class Scores:
    """Importance of each structure, higher is more important.

    Attributes:
        heads: ``[layers, query_heads]``.
        kv_heads: ``[layers, kv_heads]`` (keys and values are shared by a group of query heads).
        neurons: ``[layers, intermediate]``.
        hidden: ``[hidden]``.
    """

    heads: Tensor
    kv_heads: Tensor
    neurons: Tensor
    hidden: Tensor


# ----------------------------------------------------------------------------- checks


def _check_target(
    config: LlamaConfig,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
) -> None:
    """Raise one ValueError listing every way the target does not fit inside the teacher."""
    teacher_kv = config.num_key_value_heads or config.num_attention_heads
    problems = []
    for name, value, limit in (
        ("num_layers", num_layers, config.num_hidden_layers),
        ("hidden_size", hidden_size, config.hidden_size),
        ("intermediate_size", intermediate_size, config.intermediate_size),
        ("num_heads", num_heads, config.num_attention_heads),
        ("num_kv_heads", num_kv_heads, teacher_kv),
    ):
        if not 1 <= value <= limit:
            problems.append(f"{name}={value} must be between 1 and the teacher's {limit}")
    if num_kv_heads >= 1 and num_heads % num_kv_heads:
        problems.append(
            f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}: each key/value head "
            "must serve the same number of query heads"
        )
    elif num_kv_heads >= 1 and num_heads // num_kv_heads > config.num_attention_heads // teacher_kv:
        problems.append(
            f"{num_heads // num_kv_heads} query heads per key/value head, but the teacher has only "
            f"{config.num_attention_heads // teacher_kv}: use fewer num_heads or more num_kv_heads"
        )
    if num_heads >= 1 and hidden_size % num_heads:
        # Not needed by the maths (head_dim is kept), but LlamaConfig refuses to save otherwise.
        problems.append(
            f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}, which LlamaConfig "
            "requires: pick a multiple of num_heads"
        )
    if problems:
        raise ValueError("cannot prune the teacher to this size: " + "; ".join(problems))


def _head_dim(config: LlamaConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# ----------------------------------------------------------------------------- importance


def _magnitude_scores(teacher: LlamaForCausalLM) -> Scores:
    """Squared weight norms of everything that reads from or writes to each structure."""
    config = teacher.config
    head_dim, kv_heads = _head_dim(config), config.num_key_value_heads or config.num_attention_heads
    heads, kvs, neurons = [], [], []
    hidden = teacher.model.embed_tokens.weight.detach().float().pow(2).sum(0)
    if not config.tie_word_embeddings:
        hidden = hidden + teacher.lm_head.weight.detach().float().pow(2).sum(0)
    for layer in teacher.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        q, k, v, o = (p.weight.detach().float() for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        gate, up, down = (p.weight.detach().float() for p in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        head = q.pow(2).sum(1).view(-1, head_dim).sum(1) + o.pow(2).sum(0).view(-1, head_dim).sum(1)
        group = head.view(kv_heads, -1).sum(1) + (k.pow(2) + v.pow(2)).sum(1).view(kv_heads, head_dim).sum(1)
        heads.append(head)
        kvs.append(group)
        neurons.append(gate.pow(2).sum(1) + up.pow(2).sum(1) + down.pow(2).sum(0))
        hidden = (
            hidden + sum(w.pow(2).sum(0) for w in (q, k, v, gate, up)) + o.pow(2).sum(1) + down.pow(2).sum(1)
        )
    return Scores(torch.stack(heads), torch.stack(kvs), torch.stack(neurons), hidden)


def _calibration_scores(
    teacher: LlamaForCausalLM, batches: Iterable[Mapping[str, Tensor]], importance: Importance
) -> Scores:
    """Mask-based scores on calibration batches: gradient (the paper's) or activation size.

    Masks of ones multiply each head's output (the input of ``o_proj``), each FFN channel (the
    input of ``down_proj``) and the residual stream (after the embeddings, after each sub-layer
    and after each layer). ``|dL/dm|`` is the paper's score; the paper also masks the residual
    between the two sub-layers, which HF's fused layer does not expose (a small difference in
    the hidden-channel score only).
    """
    config = teacher.config
    n_layers, head_dim = config.num_hidden_layers, _head_dim(config)
    device = teacher.model.embed_tokens.weight.device
    ones = {"dtype": torch.float32, "device": device, "requires_grad": importance == "gradient"}
    head_mask = torch.ones(n_layers, config.num_attention_heads, **ones)
    neuron_mask = torch.ones(n_layers, config.intermediate_size, **ones)
    hidden_mask = torch.ones(config.hidden_size, **ones)
    sizes = {"heads": torch.zeros_like(head_mask), "neurons": torch.zeros_like(neuron_mask)}
    sizes["hidden"] = torch.zeros_like(hidden_mask)

    def on_heads(index: int) -> PreHook:
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            x = args[0].view(*args[0].shape[:-1], -1, head_dim)  # [B, T, heads, head_dim]
            sizes["heads"][index] += x.detach().float().norm(dim=-1).flatten(0, -2).mean(0)
            return ((x * head_mask[index].to(x.dtype)[:, None]).flatten(-2),)

        return hook

    def on_neurons(index: int) -> PreHook:
        def hook(_: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            sizes["neurons"][index] += args[0].detach().float().abs().flatten(0, -2).mean(0)
            return (args[0] * neuron_mask[index].to(args[0].dtype),)

        return hook

    def on_stream(
        _: nn.Module, __: object, output: Tensor | tuple[Tensor, ...]
    ) -> Tensor | tuple[Tensor, ...]:
        x = output[0] if isinstance(output, tuple) else output
        sizes["hidden"] += x.detach().float().abs().flatten(0, -2).mean(0)
        x = x * hidden_mask.to(x.dtype)
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handles = [teacher.model.embed_tokens.register_forward_hook(on_stream)]
    for index, layer in enumerate(teacher.model.layers):
        handles += [
            layer.self_attn.o_proj.register_forward_pre_hook(on_heads(index)),
            layer.mlp.down_proj.register_forward_pre_hook(on_neurons(index)),
            layer.self_attn.o_proj.register_forward_hook(on_stream),
            layer.mlp.down_proj.register_forward_hook(on_stream),
            layer.register_forward_hook(on_stream),
        ]
    masks = (head_mask, neuron_mask, hidden_mask)
    grads = [torch.zeros_like(m) for m in masks]
    n_batches = 0
    try:
        with torch.set_grad_enabled(importance == "gradient"):
            for batch in batches:
                ids = batch["input_ids"].to(device)
                mask = batch.get("attention_mask")
                mask = torch.ones_like(ids) if mask is None else mask.to(device)
                labels = batch.get("labels")
                labels = ids.masked_fill(mask == 0, -100) if labels is None else labels.to(device)
                # HF shifts the labels inside: this is the teacher's next-token cross-entropy.
                loss = teacher(input_ids=ids, attention_mask=mask, labels=labels).loss
                if importance == "gradient":
                    # autograd.grad leaves the teacher's .grad fields untouched.
                    for total, grad in zip(grads, torch.autograd.grad(loss, masks), strict=True):
                        total += grad.abs()
                n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if n_batches == 0:
        raise ValueError("calibration_batches is empty: pass at least one batch of input_ids")
    if importance == "gradient":
        heads, neurons, hidden = (g / n_batches for g in grads)
    else:
        # Wanda/FLAP-style: how large the structure's output is, times how strongly it is read.
        heads = torch.stack(
            [
                sizes["heads"][i]
                * layer.self_attn.o_proj.weight.detach().float().norm(dim=0).view(-1, head_dim).norm(dim=1)
                for i, layer in enumerate(teacher.model.layers)
            ]
        )
        neurons = torch.stack(
            [
                sizes["neurons"][i] * layer.mlp.down_proj.weight.detach().float().norm(dim=0)
                for i, layer in enumerate(teacher.model.layers)
            ]
        )
        hidden = sizes["hidden"]
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    return Scores(heads, heads.view(n_layers, kv_heads, -1).sum(-1), neurons, hidden)


# ----------------------------------------------------------------------------- selection


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, ties to the lower index, returned in ascending order."""
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


def _kept_layers(total: int, keep: int) -> list[int]:
    """The middle block, as in the official converter; an odd surplus comes off the top."""
    bottom = (total - keep) // 2
    return list(range(bottom, bottom + keep))


def select_structures(
    scores: Scores,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
) -> Selection:
    """Choose what to keep: middle layers, top key/value groups, top heads in each, top channels.

    Args:
        scores: Importance of each teacher structure.
        num_layers: Decoder layers to keep.
        hidden_size: Residual-stream channels to keep.
        intermediate_size: FFN channels to keep in every layer.
        num_heads: Query heads to keep in every layer.
        num_kv_heads: Key/value heads to keep in every layer.

    Returns:
        The kept teacher indices; query heads are listed group by group so that student head
        ``j`` reads student key/value head ``j // (num_heads // num_kv_heads)``.
    """
    layers = _kept_layers(scores.heads.shape[0], num_layers)
    teacher_group = scores.heads.shape[1] // scores.kv_heads.shape[1]
    per_group = num_heads // num_kv_heads
    kv_heads, heads, neurons = [], [], []
    for layer in layers:
        groups = _top(scores.kv_heads[layer], num_kv_heads)
        members = [
            group * teacher_group + _top(scores.heads[layer].view(-1, teacher_group)[group], per_group)
            for group in groups.tolist()
        ]
        kv_heads.append(groups)
        heads.append(torch.cat(members))
        neurons.append(_top(scores.neurons[layer], intermediate_size))
    return Selection(layers, _top(scores.hidden, hidden_size), kv_heads, heads, neurons)


# ----------------------------------------------------------------------------- weight copying


def _rows(index: Tensor, size: int) -> Tensor:
    """Weight rows of the heads in ``index`` when each head owns ``size`` consecutive rows."""
    return (index[:, None] * size + torch.arange(size)).flatten()


def _student_state(teacher: LlamaForCausalLM, chosen: Selection) -> dict[str, Tensor]:
    """The student's state dict: the kept slices of the teacher's tensors."""
    source = teacher.state_dict()
    head_dim = _head_dim(teacher.config)
    hidden = chosen.hidden.to(teacher.device)
    take: dict[str, Tensor] = {
        "model.embed_tokens.weight": source["model.embed_tokens.weight"][:, hidden],
        "model.norm.weight": source["model.norm.weight"][hidden],
    }
    if not teacher.config.tie_word_embeddings:
        take["lm_head.weight"] = source["lm_head.weight"][:, hidden]
    for new, (old, kv, q, ffn) in enumerate(
        zip(chosen.layers, chosen.kv_heads, chosen.heads, chosen.neurons, strict=True)
    ):
        q_rows, kv_rows = _rows(q, head_dim).to(hidden.device), _rows(kv, head_dim).to(hidden.device)
        ffn = ffn.to(hidden.device)
        # (outputs kept, inputs kept) for every linear map of the layer.
        linear = {
            "self_attn.q_proj": (q_rows, hidden),
            "self_attn.k_proj": (kv_rows, hidden),
            "self_attn.v_proj": (kv_rows, hidden),
            "self_attn.o_proj": (hidden, q_rows),
            "mlp.gate_proj": (ffn, hidden),
            "mlp.up_proj": (ffn, hidden),
            "mlp.down_proj": (hidden, ffn),
        }
        for name, (out, inp) in linear.items():
            take[f"model.layers.{new}.{name}.weight"] = source[f"model.layers.{old}.{name}.weight"][out][
                :, inp
            ]
            bias = source.get(f"model.layers.{old}.{name}.bias")
            if bias is not None:
                take[f"model.layers.{new}.{name}.bias"] = bias[out]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            take[f"model.layers.{new}.{norm}.weight"] = source[f"model.layers.{old}.{norm}.weight"][hidden]
    return {name: tensor.clone() for name, tensor in take.items()}


# ----------------------------------------------------------------------------- the entry point


def prune_llama(
    teacher: PreTrainedModel,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    calibration_batches: Iterable[Mapping[str, Tensor]] | None = None,
    importance: Importance = "magnitude",
) -> LlamaForCausalLM:
    """A smaller Llama whose weights are the kept slices of the teacher's (MiniMA's student init).

    Heads are pruned whole (the student keeps the teacher's ``head_dim``, stored explicitly in
    its config, so ``hidden_size`` need only be a multiple of ``num_heads``, not equal to
    ``num_heads * head_dim``), the same number of
    heads and FFN channels is kept in every layer, one set of hidden channels is kept throughout,
    and layers are removed from both ends (``zhang2025minima``; GeneZC/MiniMA
    ``run_converting_llama.py``). The student shares the teacher's vocabulary and tokenizer.

    Args:
        teacher: A ``LlamaForCausalLM`` (e.g. from `reference_impls.core.models.build_decoder`);
            left unchanged.
        num_layers: Decoder layers of the student.
        hidden_size: Width of the student's residual stream.
        intermediate_size: FFN width of the student.
        num_heads: Query heads per layer of the student.
        num_kv_heads: Key/value heads per layer (GQA); must divide ``num_heads``.
        calibration_batches: Batches with ``input_ids`` ``[batch, seq]`` and optionally
            ``attention_mask`` and ``labels`` (-100 ignored; HF shifts them); needed by the
            ``"activation"`` and ``"gradient"`` scores.
        importance: ``"gradient"`` — the paper's :math:`\\mathbb{E}|\\partial\\mathcal{L}_{LM}
            /\\partial m|` for masks on heads, FFN channels and hidden channels;
            ``"activation"`` — mean output size on the calibration batches times the norm of the
            weights that read it; ``"magnitude"`` — squared norms of the weights that read or write
            each structure (data-free).

    Returns:
        The pruned student, in the teacher's dtype and on its device, in eval mode. With every
        size equal to the teacher's it computes exactly the teacher's logits.

    Raises:
        TypeError: If ``teacher`` is not a ``LlamaForCausalLM``.
        ValueError: If a size is out of range, ``num_heads`` is not a multiple of
            ``num_kv_heads``, ``hidden_size`` is not a multiple of ``num_heads``, the GQA group
            would grow, the score is unknown, or calibration
            batches are missing or empty.
    """
    if not isinstance(teacher, LlamaForCausalLM):
        raise TypeError(f"prune_llama needs a LlamaForCausalLM teacher, got {type(teacher).__name__}")
    if importance not in IMPORTANCE_SCORES:
        raise ValueError(f"importance must be one of {IMPORTANCE_SCORES}, got {importance!r}")
    sizes = {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
    }
    _check_target(teacher.config, **sizes)
    if importance == "magnitude":
        scores = _magnitude_scores(teacher)
    elif calibration_batches is None:
        raise ValueError(
            f"importance={importance!r} needs calibration_batches (or use importance='magnitude')"
        )
    else:
        was_training = teacher.training
        teacher.eval()
        scores = _calibration_scores(teacher, calibration_batches, importance)
        teacher.train(was_training)
    chosen = select_structures(scores, **sizes)

    config = LlamaConfig.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.intermediate_size = intermediate_size
    config.num_attention_heads = num_heads
    config.num_key_value_heads = num_kv_heads
    config.head_dim = _head_dim(teacher.config)  # heads are never cut inside
    # Not serialised by to_dict; a different kernel would change the logits in the last bits.
    config._attn_implementation = teacher.config._attn_implementation
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in chosen.layers]
    student = LlamaForCausalLM(config).to(device=teacher.device, dtype=teacher.dtype)
    missing, unexpected = student.load_state_dict(_student_state(teacher, chosen), strict=False)
    # A tied LM head is the embedding itself, so it is the one key allowed to be absent.
    if unexpected or set(missing) - ({"lm_head.weight"} if config.tie_word_embeddings else set()):
        raise RuntimeError(
            f"pruned state does not fit the student: missing {missing}, unexpected {unexpected}"
        )
    if config.tie_word_embeddings:
        student.tie_weights()
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def student_shape(teacher: PreTrainedModel, fraction: float) -> dict[str, int]:
    """The prunable shape whose parameter count is closest to ``fraction`` of the teacher's."""
    config = teacher.config
    target = fraction * count_parameters(teacher)
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    ffn_ratio = config.intermediate_size / config.hidden_size
    best: tuple[float, dict[str, int]] | None = None
    for layers in range(1, config.num_hidden_layers + 1):
        for hidden in range(8, config.hidden_size + 1, 8):
            heads = max(1, min(config.num_attention_heads, round(hidden / head_dim)))
            if hidden % heads:
                continue  # LlamaConfig requires hidden_size to be a multiple of the heads
            shape = {
                "num_layers": layers,
                "hidden_size": hidden,
                "intermediate_size": min(config.intermediate_size, round(ffn_ratio * hidden)),
                "num_heads": heads,
                "num_kv_heads": heads,
            }
            per_layer = 4 * hidden * heads * head_dim + 3 * hidden * shape["intermediate_size"] + 2 * hidden
            size = (
                config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
                + layers * per_layer
                + hidden
            )
            gap = abs(size - target)
            if best is None or gap < best[0]:
                best = (gap, shape)
    if best is None:
        raise ValueError(f"no prunable shape for fraction {fraction}")
    return best[1]
