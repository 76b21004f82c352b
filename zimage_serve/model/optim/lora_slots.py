"""LoRA slots: a transformer that runs any of its LoRA adapters, or none, with the same modules, so that switching
adapters recompiles nothing, re-captures no CUDA graph and never touches the base weights.

:func:`install_slots` wraps each targeted Linear layer (after fusing, before FP8, compiling and CUDA graphs) in a
:class:`LoraSlot`: buffers ``lora_a`` [parts x rank, in] and ``lora_b`` [out, parts x rank], zero-padded to the
slot rank (the largest configured), and a per-output ``scale``. Its forward is peft's LoRA Linear's:
``result = base(x); result = result + lora_b(lora_a(x in the adapter's dtype)) * scale`` in that dtype, then cast
back. A fused layer (``to_qkv``, ``w13``) carries its parts' matrices side by side: ``lora_a`` stacked,
``lora_b`` block-diagonal, each part's scale on its own rows.

:meth:`LoraSlots.use` copies an adapter's matrices into the buffers in place (one ``torch._foreach_copy_``) or
sets every scale to zero, which makes each slot's output exactly its base layer's (``result + 0``, cast back).
Compiled blocks read the buffers as inputs and captured graphs read their memory, so both see the change.

Folded slots (:class:`FoldedLoraSlot`, ``install_slots(fold=True)``: the engine's resident CUDA plans without FP8)
compute the same sum inside the base layer's matmul: its weight gets ``parts x rank`` more input columns holding
the active adapter's ``lora_b`` times its scales, and its input ``x`` is widened by ``lora_a(x)``:
``[x, x Aᵀ] @ [W, s·B]ᵀ``. Peft's way writes the update to memory and reads the output back to add it, four
passes over every layer's output (10 % of the denoise at 1024² on the H200, bench run48); folded, what remains is
the narrow ``x Aᵀ`` and the concatenation. The rounding is the GPU's (one accumulator) rather than peft's; the base
runs with the extra columns zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .fusion import FUSED_PARTS


@dataclass(frozen=True)
class SlotSpec:
    """The layers to give slots (their names before fusing) and the rank of every slot."""

    modules: frozenset[str]
    rank: int


class LoraSlot(nn.Module):
    """A base layer plus the active adapter's low-rank update (see the module's docstring)."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, parts: int, rank: int,
                 dtype: torch.dtype, device):
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", torch.zeros(parts * rank, in_features, dtype=dtype, device=device))
        self.register_buffer("lora_b", torch.zeros(out_features, parts * rank, dtype=dtype, device=device))
        self.register_buffer("scale", torch.zeros(out_features, dtype=dtype, device=device))
        self.parts, self.rank = parts, rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        dtype = result.dtype
        x = x if x.dtype == self.lora_a.dtype else x.to(self.lora_a.dtype)
        result = result + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale
        return result.to(dtype)

    def extra_repr(self) -> str:
        return f"parts={self.parts}, rank={self.rank}"


class FoldedLoraSlot(nn.Module):
    """A base Linear layer and the active adapter's update in one matmul (see the module's docstring). Its
    ``weight`` is the base's with ``parts x rank`` zero columns appended, the row padded to a multiple of 8 (the
    base's own is freed); ``lora_b`` is a view of those columns, which :class:`LoraSlots` fills with the scaled
    matrices."""

    def __init__(self, base: nn.Linear, parts: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.parts, self.rank = base.in_features, base.out_features, parts, rank
        w = base.weight
        # the widened rows a multiple of 8 elements (16 bytes in bf16): an unaligned pitch made cuBLAS's matmul
        # 3.7x slower on the H200 (K 3852 against 3864); the padding's columns and lora_a rows stay zero
        extra = -(-(self.in_features + parts * rank) // 8) * 8 - self.in_features
        weight = torch.zeros(self.out_features, self.in_features + extra, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            weight[:, :self.in_features].copy_(w)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = base.bias
        self.register_buffer("lora_a", torch.zeros(extra, self.in_features, dtype=w.dtype, device=w.device))

    @property
    def lora_b(self) -> torch.Tensor:
        return self.weight[:, self.in_features:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.cat([x, F.linear(x, self.lora_a)], dim=-1), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, parts={self.parts}, rank={self.rank}"


def linear_shapes(transformer: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (out, in)} of the transformer's Linear layers, by their names before fusing (fusion.py), slotted or
    not."""
    shapes = {}
    for parent_name, child_name, layer in _linears(transformer):
        parts = FUSED_PARTS.get(child_name)
        for name in _part_names(parent_name, child_name, parts):
            shapes[name] = (layer.out_features // (len(parts) if parts else 1), layer.in_features)
    return shapes


def _linears(transformer: nn.Module):
    """(parent's name, child's name, Linear) of every Linear layer, a slot's base counted as the slot (a folded
    slot is its own: it has the Linear's ``in_features`` and ``out_features``)."""
    for parent_name, parent in transformer.named_modules():
        if isinstance(parent, LoraSlot):
            continue
        for child_name, child in parent.named_children():
            layer = child.base if isinstance(child, LoraSlot) else child
            if isinstance(layer, (nn.Linear, FoldedLoraSlot)):
                yield parent_name, child_name, layer


def _part_names(parent_name: str, child_name: str, parts) -> tuple[str, ...]:
    prefix = f"{parent_name}." if parent_name else ""
    return tuple(prefix + p for p in parts) if parts else (prefix + child_name,)


_SWITCHING = "switching"  # LoraSlots.active while a switch writes (never an adapter key: those are HeldAdapter s)


@dataclass
class _Layer:
    slot: LoraSlot | FoldedLoraSlot
    parts: tuple[str, ...]  # the names (before fusing) whose updates this slot carries, in its row order
    out_per_part: int


@dataclass(frozen=True)
class SlotWeights:
    """An adapter in the slots' layout, on their device (:meth:`LoraSlots.layout`): per slot, in slot order, its
    ``lora_a`` and ``lora_b`` and, per part, peft's (lora_alpha, r, use_rslora), None for a part it lacks."""

    a: list
    b: list
    factors: list
    nbytes: int


class LoraSlots:
    """The slots of one transformer and the adapter they run now (None: the base)."""

    def __init__(self, layers: dict[str, _Layer], rank: int, dtype: torch.dtype, device, folded: bool = False):
        self.layers, self.rank, self.dtype, self.device, self.folded = layers, rank, dtype, device, folded
        self.active = None  # (adapter key, scale) the slots run now; None: the base; _SWITCHING: being written
        self._in_buffers = None  # the key of the adapter whose matrices the buffers hold (folded: its lora_a)
        self.switches = 0

    @property
    def modules(self) -> set[str]:
        return {part for layer in self.layers.values() for part in layer.parts}

    def layout(self, modules: dict) -> SlotWeights:
        """An adapter's matrices in the slots' layout. ``modules``: {name before fusing: (A [r, in], B [out, r],
        (lora_alpha, r, use_rslora))}; a slot part the adapter lacks stays zero."""
        a_s, b_s, factors = [], [], []
        for layer in self.layers.values():
            a = torch.zeros(layer.slot.lora_a.shape, dtype=self.dtype, device=self.device)
            b = torch.zeros(layer.slot.lora_b.shape, dtype=self.dtype, device=self.device)
            per_part = []
            for i, part in enumerate(layer.parts):
                if part not in modules:
                    per_part.append(None)
                    continue
                pa, pb, factor = modules[part]
                r, rows = pa.shape[0], slice(i * layer.out_per_part, (i + 1) * layer.out_per_part)
                a[i * self.rank:i * self.rank + r] = pa.to(self.device, self.dtype)
                b[rows, i * self.rank:i * self.rank + r] = pb.to(self.device, self.dtype)
                per_part.append(factor)
            a_s.append(a)
            b_s.append(b)
            factors.append(per_part)
        nbytes = sum(t.numel() * t.element_size() for t in a_s + b_s)
        return SlotWeights(a_s, b_s, factors, nbytes)

    def use(self, key, weights: SlotWeights | None, scale: float = 1.0) -> None:
        """Run ``weights`` (named ``key``) at ``scale``, as peft's ``set_adapters([key], [scale])`` does; None:
        the base model. Nothing is done when that is what runs already."""
        wanted = None if weights is None else (key, scale)
        if wanted == self.active:
            return
        slots = [layer.slot for layer in self.layers.values()]
        self.active = _SWITCHING  # until every write is done: a switch that fails (out of memory) names nothing
        if self.folded:
            self._use_folded(slots, key, weights, scale)
        else:
            self._use_buffers(slots, key, weights, scale)
        self.active = wanted
        self.switches += 1

    def _use_buffers(self, slots: list, key, weights: SlotWeights | None, scale: float) -> None:
        with torch.no_grad():
            if weights is None:
                torch._foreach_zero_([s.scale for s in slots])
            else:
                if self._in_buffers != key:
                    self._in_buffers = None
                    torch._foreach_copy_([s.lora_a for s in slots], weights.a)
                    torch._foreach_copy_([s.lora_b for s in slots], weights.b)
                    self._in_buffers = key
                torch._foreach_copy_([s.scale for s in slots],
                                     [_scales(layer, f, scale) for layer, f in zip(self.layers.values(), weights.factors)])

    def _use_folded(self, slots: list, key, weights: SlotWeights | None, scale: float) -> None:
        """The weights' extra columns: zero for the base, else ``lora_b`` times each row's scale (computed in
        float32, rounded once to the model's dtype)."""
        with torch.no_grad():
            if weights is None:
                torch._foreach_zero_([s.lora_b for s in slots])
                return
            if self._in_buffers != key:
                self._in_buffers = None
                torch._foreach_copy_([s.lora_a for s in slots], weights.a)
                self._in_buffers = key
            for slot, b, layer, f in zip(slots, weights.b, self.layers.values(), weights.factors):
                # one layer's float32 copy at a time (all at once: 1.45 GB at rank 64, beyond the plan's reserve)
                rows = _scales(layer, f, scale, torch.float32).to(self.device, non_blocking=True).unsqueeze(1)
                slot.lora_b.copy_(b.float() * rows)  # (not in place: float() of a float32 b is b itself)

    def forget(self, key) -> None:
        """``key``'s matrices may be freed: the buffers no longer count as holding them (the next use copies)."""
        if self._in_buffers == key and not (isinstance(self.active, tuple) and self.active[0] == key):
            self._in_buffers = None


def _scales(layer: _Layer, factors: list, scale: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A slot's per-row scale: peft's ``set_scale`` (``scale * lora_alpha / r``, or over sqrt(r) with rsLoRA),
    computed in Python floats as peft does, per part; 0 for a part the adapter lacks."""
    values = []
    for factor in factors:
        if factor is None:
            values.append(0.0)
        else:
            alpha, r, rslora = factor
            values.append(scale * alpha / math.sqrt(r) if rslora else scale * alpha / r)
    return torch.tensor(values, dtype=dtype or layer.slot.scale.dtype).repeat_interleave(layer.out_per_part)


def install_slots(transformer: nn.Module, spec: SlotSpec, device, dtype: torch.dtype = torch.float32,
                  fold: bool = False) -> LoraSlots:
    """Wrap the layers ``spec`` names (fused or not) in :class:`LoraSlot` s, in place, their buffers on ``device``
    (where the model computes; layers offloaded to the CPU between batches take them along, streamed ones leave
    them there); returns their manager. ``dtype``: what the update is computed in (the engine: the model's; float32
    is peft's arithmetic for bf16 adapters, and 1.43x the base denoise on the H200, bench run47).
    ``fold``: :class:`FoldedLoraSlot` s instead, computing in the layers' own dtype, for a transformer resident
    on ``device`` that nothing moves or quantizes afterwards (each weight is replaced by a wider copy).
    Raises ValueError naming a layer the transformer does not have."""
    targets = set(spec.modules)
    layers: dict[str, _Layer] = {}
    # by name, so that no reference outlives its layer: a folded layer's old weight is freed before the next copy
    for parent_name, child_name in [(p, c) for p, c, _ in _linears(transformer)]:
        names = _part_names(parent_name, child_name, FUSED_PARTS.get(child_name))
        if not targets.intersection(names):
            continue
        parent = transformer.get_submodule(parent_name)
        layer = getattr(parent, child_name)
        layer = layer.base if isinstance(layer, LoraSlot) else layer
        if fold:
            slot = FoldedLoraSlot(layer, len(names), spec.rank)
        else:
            slot = LoraSlot(layer, layer.in_features, layer.out_features, len(names), spec.rank, dtype, device)
        setattr(parent, child_name, slot)
        layers[f"{parent_name}.{child_name}" if parent_name else child_name] = _Layer(
            slot, names, layer.out_features // len(names))
        del layer
        targets.difference_update(names)
    if targets:
        raise ValueError(f"the transformer has no layer {sorted(targets)[0]!r} ({len(targets)} missing)")
    if fold:
        dtype = next(iter(layers.values())).slot.weight.dtype if layers else dtype
    return LoraSlots(layers, spec.rank, dtype, device, folded=fold)
