"""MADE (Germain, Gregor, Murray & Larochelle, 2015): registered as ``made``.

A dense network whose weight matrices are masked so that output d sees inputs before d only (in the
model's generation ordering), so one pass gives every conditional. Degrees, 0-based in generation order:
input j (every code of position j) has degree j; a hidden unit of layer l has a degree m drawn uniformly
from [low_l, D - 2] (low_1 = 0, low_l = the least degree of layer l - 1) and sees the units of the layer
below of degree <= m; output d sees the last hidden layer's units of degree < d. (With D = 1 no hidden
unit connects: the single conditional is the output bias.)

Inputs: a categorical value k > 0 at position j sets code k - 1 of j's K - 1 codes (0 sets none; binary data
is x itself); a real value is read standardized and bounded (``continuous.standardized``). Outputs per
position: K logits (``Categorical``; for K = 2 one, the logit of a 1 against 0 for a 0), or a mixture of ``components`` Gaussians on the standardized scale
(MADE-MoG, ``GaussianMixture``).

Connectivity-agnostic training and ensembles: ``masks`` = N > 1 degree sets, drawn from a generator seeded
with ``mask_seed`` + i (set i). In training mode each call draws one set from a seeded stream (one per
minibatch), so the weights learn every connectivity. In eval mode the model is the exact ensemble
p(x) = (1/N) sum_i p_i(x), still one autoregressive model in the same ordering:

    p(x_d | x_<d) = sum_i w_i(x_<d) p_i(x_d | x_<d),   w_i(x_<d) = p_i(x_<d) / sum_j p_j(x_<d),

the members' weights read off their prefix log-likelihoods (an exclusive cumulative sum over positions),
so the chain rule telescopes to log p(x) = logsumexp_i log p_i(x) - log N. Categorical conditionals are the
logsumexp over members of log w_i + log_softmax(logits_i); a real one is a mixture of N * M Gaussians (the
family has N * M components; in training mode the drawn member's M components are repeated N times, the
same mixture). Every checker property holds of the ensemble as of one model; each conditional costs N
member passes. Sampling re-runs the network on the prefix (MADE has no cheaper step: O(D) passes).
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn
from torch.nn import functional as F

from densreg.plugins.continuous.standardized import StandardizedReals
from densreg.registry import ConfigError, DensityModel, mixture_log_density
from densreg.registry.families import Categorical, GaussianMixture

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
LIMITS = {"hidden": 1 << 16, "layers": 16, "masks": 256, "components": 1 << 10}


def hidden_degrees(positions: int, hidden: int, layers: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Degrees (H,) int64 of each hidden layer (module docstring): layer l uniform in [low_l, D - 2]."""
    degrees, low = [], 0
    for _ in range(layers):
        if positions < 2:
            m = torch.full((hidden,), -1, dtype=torch.int64)
        else:
            m = torch.randint(low, positions - 1, (hidden,), generator=generator)
            low = int(m.min())
        degrees.append(m)
    return degrees


def connectivity(positions: int, hidden: int, layers: int, seed: int) -> list[torch.Tensor]:
    """The bool masks (out, in) of one degree set: input (H, D), hidden (H, H) each, output (D, H), the
    input and output ones per position (expanded to codes and parameters by the model)."""
    degrees = hidden_degrees(positions, hidden, layers, torch.Generator().manual_seed(seed))
    inputs = torch.arange(positions)
    masks = [degrees[0][:, None] >= inputs[None, :]]
    masks += [after[:, None] >= before[None, :] for before, after in zip(degrees, degrees[1:])]
    masks.append(inputs[:, None] > degrees[-1][None, :])
    return masks


class MADE(StandardizedReals, DensityModel):
    """Masked autoencoder for distribution estimation, with connectivity-agnostic ensembles."""

    registry_name = "made"
    description = "MADE (Germain et al. 2015): a masked dense network, every conditional in one pass; " \
                  "ensembles over masks"
    families = (Categorical, GaussianMixture)

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 500, layers: int = 1, masks: int = 1, mask_seed: int = 0, components: int = 10,
                 activation: str = "relu") -> None:
        for key, value in (("hidden", hidden), ("layers", layers), ("masks", masks), ("components", components)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMITS[key]:
                raise ConfigError(f"{key} must be an integer from 1 to {LIMITS[key]}, got {value!r}")
        if not isinstance(mask_seed, int) or isinstance(mask_seed, bool) or not 0 <= mask_seed < 2**62:
            raise ConfigError(f"mask_seed must be a non-negative integer, got {mask_seed!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        family = Categorical(num_categories) if num_categories else GaussianMixture(components * masks)
        super().__init__(event_shape, num_categories, ordering, family)
        self.hidden, self.layers, self.masks, self.mask_seed = hidden, layers, masks, mask_seed
        self.components, self.activation = components, activation
        D = self.num_positions
        self.codes = max(num_categories - 1, 1)  # inputs per position
        # outputs per position: one logit for binary data (p(1) against a 0 for p(0)), K logits, or 3M
        self.outputs_per_position = (1 if num_categories == 2 else num_categories) if num_categories else 3 * components
        sizes = [D * self.codes, *([hidden] * layers), D * self.outputs_per_position]
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(out, inp) / math.sqrt(max(inp, 1)))
                                        for inp, out in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(out)) for out in sizes[1:])
        if not num_categories:
            self.register_standardization()
        for i in range(masks):  # not saved (a function of the config); bool, so kits drawing float buffers skip them
            for layer, mask in enumerate(connectivity(D, hidden, layers, mask_seed + i)):
                if layer == 0:
                    mask = mask.repeat_interleave(self.codes, 1)
                elif layer == layers:
                    mask = mask.repeat_interleave(self.outputs_per_position, 0)
                self.register_buffer(f"mask_{i}_{layer}", mask, persistent=False)
        self.draws = random.Random(mask_seed)  # the member of each training minibatch (deep-copyable)

    def config(self):
        extra = {"components": self.components} if not self.num_categories else {}
        return {**super().config(), "hidden": self.hidden, "layers": self.layers, "masks": self.masks,
                "mask_seed": self.mask_seed, **extra, "activation": self.activation}

    def mask(self, member: int, layer: int) -> torch.Tensor:
        return getattr(self, f"mask_{member}_{layer}")

    # -- one member ---------------------------------------------------------
    def inputs(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (values (B, D) in generation order, standardized for real values; network inputs
        (B, D * codes))."""
        if not self.num_categories:
            _, u = self.standardize(x)
            return u, self.bounded(u)
        seq = self.to_sequence(self.validate(x))
        if self.num_categories == 2:
            return seq, seq.to(self.weights[0].dtype)
        codes = F.one_hot(seq, self.num_categories)[..., 1:]
        return seq, codes.flatten(1).to(self.weights[0].dtype)

    def member(self, inputs: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i``'s outputs (B, D, P): logits (categorical) or standardized (3, M) flattened."""
        h = inputs
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = F.linear(h, torch.where(self.mask(i, layer), w, 0.0), b)  # bool masks: no float copy
            if layer < self.layers:
                h = ACTIVATIONS[self.activation](h)
        return h.unflatten(-1, (self.num_positions, self.outputs_per_position))

    def member_params(self, out: torch.Tensor):
        """Outputs (B, D, P) -> the family's parameters of one member (logits (B, D, K), or MixtureParams of
        (B, D, M))."""
        if self.num_categories == 2:
            return torch.cat([torch.zeros_like(out), out], -1)
        if self.num_categories:
            return out
        return self._params(out.unflatten(-1, (3, self.components)), self.loc.unsqueeze(0),
                            self.log_scale.unsqueeze(0))

    # -- the model: one drawn member (training) or the ensemble ---------------
    def conditional_params(self, x):
        """(B, C, H, W) -> logits (B, D, K), or MixtureParams of (B, D, N * M) each (module docstring)."""
        seq, inputs = self.inputs(x)
        if self.masks == 1 or (self.training and torch.is_grad_enabled()):
            i = self.draws.randrange(self.masks)
            params = self.member_params(self.member(inputs, i))
            return params if self.num_categories else params.map(lambda t: t.repeat(1, 1, self.masks))
        outs = [self.member(inputs, i) for i in range(self.masks)]
        if self.num_categories:
            log_probs = torch.stack([torch.log_softmax(self.member_params(out), -1) for out in outs])  # (N, B, D, K)
            observed = log_probs.gather(-1, seq.expand(self.masks, *seq.shape).unsqueeze(-1)).squeeze(-1)
            return torch.logsumexp(self.prefix_weights(observed).unsqueeze(-1) + log_probs, 0)
        params = [self.member_params(out) for out in outs]
        observed = torch.stack([mixture_log_density(self.standardized_mixture(out.unflatten(-1, (3, self.components))),
                                                    seq) for out in outs])  # (N, B, D), the u-scale: weights only
        weights = self.prefix_weights(observed)
        logits = torch.cat([torch.log_softmax(p.logits, -1) + w.unsqueeze(-1) for p, w in zip(params, weights)], -1)
        return params[0]._replace(logits=logits, means=torch.cat([p.means for p in params], -1),
                                  log_scales=torch.cat([p.log_scales for p in params], -1))

    @staticmethod
    def prefix_weights(observed: torch.Tensor) -> torch.Tensor:
        """Members' log-likelihoods of each value (N, B, D) -> log w_i(x_<d) (N, B, D): the members' posterior
        weights given the values before d (an exclusive cumulative sum, so position d never reads x_d)."""
        prefix = torch.cat([torch.zeros_like(observed[..., :1]), observed[..., :-1].cumsum(-1)], -1)
        return torch.log_softmax(prefix, 0)
