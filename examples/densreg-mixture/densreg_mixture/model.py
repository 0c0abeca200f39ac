"""A mixture of M product distributions (Bernoullis for K=2, categoricals for K>2).

    p(x) = sum_m pi_m prod_d p_m(x_d)

log_prob is exact by log-sum-exp over components. The autoregressive conditionals
come from the posterior over components given the prefix:

    p(x_d = k | x_<d) = sum_m p(m | x_<d) p_m(x_d = k),
    log p(m | x_<d) = log_softmax_m(log pi_m + sum_{j<d} log p_m(x_j)),

so every conditional logit is a normalized log-probability (O(1), never the raw
prefix sum of ~-500 nats at 28x28, which float32 cannot carry to 1e-5). The cached
step carries log p(m | x_<d) (B, M) and costs O(M K) whatever D is.
"""

from __future__ import annotations

import torch
from torch import nn

from densreg.registry import ConfigError, DensityModel

EM_CHUNK = 4096  # images per E-step batch
MAX_COMPONENTS = 1 << 16
MAX_TABLE_ENTRIES = 1 << 28  # components x D x K: 1 GiB of float32 logits


class Mixture(DensityModel):
    """Mixture of ``components`` products of independent categoricals, fit by EM
    (``fit="em"``, default) or by densreg's gradient loop on log_prob (``fit="gradient"``).

    Parameters: ``weight_logits`` (M,) -> log pi = log_softmax; ``logits`` (M, D, K)
    per image position (flat C*H*W index, not generation order) -> log p_m(x_d = k).
    """

    registry_name = "mixture"
    description = "Mixture of Bernoullis/categoricals: exact log_prob by log-sum-exp, EM fit"
    closed_form = True

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 components: int = 10, iterations: int = 50, alpha: float = 1.0, seed: int = 0,
                 fit: str = "em") -> None:
        super().__init__(event_shape, num_categories, ordering)
        if fit not in ("em", "gradient"):
            raise ConfigError(f"fit must be 'em' (closed-form EM) or 'gradient' (densreg's Adam loop), got {fit!r}")
        self.fit = fit
        self.closed_form = fit == "em"  # densreg's fit() runs EM, or gradient training on log_prob
        if not 1 <= components <= MAX_COMPONENTS:
            raise ConfigError(f"components must be from 1 to {MAX_COMPONENTS}, got {components}")
        if components * self.num_positions * self.num_categories > MAX_TABLE_ENTRIES:
            raise ConfigError(f"{components} components need {components}x{self.num_positions}x"
                              f"{self.num_categories} table entries, over the limit of {MAX_TABLE_ENTRIES}")
        if iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {iterations}")
        if not alpha > 0:
            raise ConfigError(f"alpha must be > 0 (pseudo-counts keep every log-probability finite), got {alpha}")
        self.components, self.iterations, self.alpha, self.seed = int(components), int(iterations), float(alpha), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.weight_logits = nn.Parameter(torch.zeros(self.components))
        self.logits = nn.Parameter(0.1 * torch.randn(self.components, self.num_positions, self.num_categories,
                                                     generator=gen))

    def config(self):
        return {**super().config(), "components": self.components, "iterations": self.iterations,
                "alpha": self.alpha, "seed": self.seed, "fit": self.fit}

    def free_parameters(self) -> int:
        return self.components - 1 + self.components * self.num_positions * (self.num_categories - 1)

    # -- density ------------------------------------------------------------------
    def log_weights(self) -> torch.Tensor:
        """log pi, (M,)."""
        return torch.log_softmax(self.weight_logits, -1)

    def log_tables(self) -> torch.Tensor:
        """log p_m(x_d = k), (M, D, K) in image order."""
        return torch.log_softmax(self.logits, -1)

    def joint_log_likelihoods(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_m + log p_m(x) in nats, (B, C, H, W) -> float64 (B, M)."""
        flat = self.validate(x).flatten(1)  # (B, D); not len(x), which export would fix to one batch size
        tables = self.log_tables().double()  # (M, D, K)
        out = self.log_weights().double().expand(flat.shape[0], -1)
        for k in range(self.num_categories):  # one (B, D) @ (D, M) product per value
            out = out + (flat == k).double() @ tables[:, :, k].transpose(0, 1)
        return out

    def log_prob(self, x):
        """Exact log p(x) in nats by log-sum-exp over components, (B, C, H, W) -> (B,)."""
        return torch.logsumexp(self.joint_log_likelihoods(x), -1).to(self.logits.dtype)

    def features(self, x):
        """Posterior over components p(m | x), (B, C, H, W) -> (B, M)."""
        return torch.softmax(self.joint_log_likelihoods(x), -1).float()

    def conditional_logits(self, x):
        """log p(x_{o(d)} = k | x_{o(<d)}), (B, C, H, W) -> (B, D, K), normalized over k."""
        seq = self.to_sequence(self.validate(x))
        tables = self.log_tables().double()[:, self.order]  # (M, D, K) in generation order
        per_value = tables.permute(1, 2, 0)[torch.arange(self.num_positions, device=seq.device), seq]  # (B, D, M)
        prefix = torch.cumsum(per_value, 1) - per_value  # sum over j < d, (B, D, M)
        posterior = torch.log_softmax(self.log_weights().double() + prefix, -1)
        return torch.logsumexp(posterior.unsqueeze(-1) + tables.transpose(0, 1).unsqueeze(0), 2).to(self.logits.dtype)

    # -- cached step ------------------------------------------------------------------
    def initial_state(self, batch_size):
        """(log p(m | nothing seen),) = (log pi expanded to (B, M),)."""
        return (self.log_weights().unsqueeze(0).expand(batch_size, -1).clone(),)

    def step(self, value, position, state):
        """Add log p_m(value) at position d-1 to the running posterior, renormalize, mix position d."""
        (posterior,) = state
        position = torch.as_tensor(position, dtype=torch.int64, device=self.logits.device)
        previous = (position - 1).clamp(min=0)
        flat = self.order.index_select(0, torch.stack([previous, position]))  # image indices of d-1 and d
        rows = torch.log_softmax(self.logits.index_select(1, flat), -1)  # (M, 2, K)
        seen = rows[:, 0].index_select(1, value).transpose(0, 1)  # (B, M): log p_m(x_{d-1})
        posterior = torch.where(position > 0, torch.log_softmax(posterior + seen, -1), posterior)
        logits = torch.logsumexp(posterior.unsqueeze(-1) + rows[:, 1].unsqueeze(0), 1)  # (B, K)
        return logits, (posterior,)

    # -- EM ---------------------------------------------------------------------------
    @torch.no_grad()
    def fit_closed_form(self, x):
        """``iterations`` EM steps from a seeded start on int64 images (N, C, H, W).

        Start: each component is the data mean blended half-half with one random
        image. M-step: pi_m = (N_m + alpha) / (N + M alpha), p_m(x_d = k) =
        (sum_n r_nm [x_nd = k] + alpha) / (N_m + K alpha). Returns train NLL (nats).
        """
        x = self.validate(x)
        n, d, k, m = len(x), self.num_positions, self.num_categories, self.components
        flat = x.reshape(n, d)
        gen = torch.Generator().manual_seed(self.seed)
        mean = torch.stack([(flat == value).double().mean(0) for value in range(k)], -1)  # (D, K)
        picks = flat[torch.randint(0, n, (m,), generator=gen).to(x.device)]
        start = 0.5 * mean + 0.5 * torch.nn.functional.one_hot(picks, k).double()
        self._set(torch.full((m,), 1.0 / m, dtype=torch.float64, device=x.device), (start + 1e-3) / (1 + k * 1e-3))
        history = []
        for _ in range(self.iterations):
            resp_sum = torch.zeros(m, dtype=torch.float64, device=x.device)
            counts = torch.zeros(m, d, k, dtype=torch.float64, device=x.device)
            total = 0.0
            for begin in range(0, n, EM_CHUNK):
                chunk = x[begin:begin + EM_CHUNK]
                joint = self.joint_log_likelihoods(chunk)  # (b, M)
                norm = torch.logsumexp(joint, -1, keepdim=True)
                resp = torch.exp(joint - norm)
                total += float(norm.sum())
                resp_sum += resp.sum(0)
                values = chunk.reshape(len(chunk), d)
                for value in range(k):  # expected counts of each value, (M, D)
                    counts[:, :, value] += resp.transpose(0, 1) @ (values == value).double()
            history.append(-total / n)
            weights = (resp_sum + self.alpha) / (n + m * self.alpha)
            probs = (counts + self.alpha) / (resp_sum.reshape(m, 1, 1) + k * self.alpha)
            self._set(weights, probs)
        nll = float(-self.log_prob(x).double().mean())
        return {"train_nll_nats": nll, "em_iterations": self.iterations,
                "em_nll_start": history[0] if history else nll}

    def _set(self, weights: torch.Tensor, probs: torch.Tensor) -> None:
        self.weight_logits.copy_(weights.log().float())
        self.logits.copy_(probs.log().float())

