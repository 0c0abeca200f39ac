"""A full-covariance mixture of Gaussians fit by EM, as a chain-rule model: ``gaussian-mixture``.

    p(x) = sum_k w_k N(x; mu_k, L_k L_k^T)          L_k lower-triangular (Cholesky), generation order

Its conditionals are exact mixtures of Gaussians. With P_k = L_k^{-1} (lower-triangular, stored)
and z_k = P_k (x - mu_k), z_kd = sum_{j<d} P_kdj (x_j - mu_kj) + P_kdd (x_d - mu_kd) is standard
normal under component k, so

    x_d | x_<d, k  ~  N(mu_kd - sum_{j<d} P_kdj (x_j - mu_kj) / P_kdd,  1 / P_kdd^2)
    p(k | x_<d)    ~  w_k prod_{j<d} N(z_kj; 0, 1) P_kjj                (the posterior weight)

so p(x_d | x_<d) is a mixture of M Gaussians with those weights, means and scales, and the
chain rule of the conditionals is the joint density exactly. ``fit_closed_form`` runs EM
(k-means++ seeds, ``iterations`` steps or until the mean log-likelihood gains less than
``tolerance`` nats), in float64, with ``reg`` added to every covariance's diagonal. Free
parameters: M - 1 + M D + M D (D + 1) / 2.
"""

from __future__ import annotations

import math

import torch

from densreg.registry import ConfigError, DensityModel, MixtureParams
from densreg.registry.protocol import step_positions
from densreg.registry.families import GaussianMixture as MixtureFamily
from densreg.registry.families.gaussian_mixture import LOG_SQRT_2PI

MAX_POSITIONS = 4096  # D x D covariances


class GaussianMixture(DensityModel):
    """Full-covariance mixture of Gaussians, fit by EM in closed form; conditionals exact mixtures."""

    registry_name = "gaussian-mixture"
    description = "Full-covariance mixture of Gaussians fit by EM (closed form); exact mixture conditionals"
    closed_form = True
    families = (MixtureFamily,)

    def __init__(self, event_shape=(1, 1, 63), num_categories: int = 0, ordering: str = "raster",
                 components: int = 10, iterations: int = 100, tolerance: float = 1e-4, reg: float = 1e-6,
                 seed: int = 0) -> None:
        super().__init__(event_shape, num_categories, ordering, MixtureFamily(components))
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
        if not tolerance >= 0 or not reg >= 0:
            raise ConfigError(f"tolerance and reg must be >= 0, got {tolerance!r} and {reg!r}")
        if self.num_positions > MAX_POSITIONS:
            raise ConfigError(f"gaussian-mixture keeps D x D covariances: D = {self.num_positions} is over "
                              f"{MAX_POSITIONS}")
        self.components, self.iterations = components, iterations
        self.tolerance, self.reg, self.seed = float(tolerance), float(reg), int(seed)
        M, D = components, self.num_positions
        # in generation order: log w (M,), mu (M, D), inverse Cholesky factors P = L^{-1} (M, D, D)
        self.register_buffer("log_weights", torch.full((M,), -math.log(M)))
        self.register_buffer("means", torch.linspace(-1, 1, M).unsqueeze(-1).expand(M, D).clone()
                             if M > 1 else torch.zeros(M, D))
        self.register_buffer("precision_tril", torch.eye(D).expand(M, D, D).clone())  # P_k = L_k^{-1}

    def config(self):
        return {**super().config(), "components": self.components, "iterations": self.iterations,
                "tolerance": self.tolerance, "reg": self.reg, "seed": self.seed}

    def free_parameters(self) -> int:
        M, D = self.components, self.num_positions
        return M - 1 + M * D + M * D * (D + 1) // 2

    # -- density ----------------------------------------------------------------
    def conditional_params(self, x):
        """Exact mixture conditionals: (B, C, H, W) -> MixtureParams of (B, D, M) each."""
        centred = self.to_sequence(self.validate(x)).unsqueeze(1) - self.means  # x - mu_k, (B, M, D)
        diagonal = torch.diagonal(self.precision_tril, dim1=-2, dim2=-1)  # P_kdd (M, D)
        strict = torch.einsum("mdj,bmj->bmd", torch.tril(self.precision_tril, diagonal=-1), centred)
        z = strict + diagonal * centred  # z_k = P_k (x - mu_k)
        means = self.means - strict / diagonal  # the mean of x_d given x_<d and k
        terms = -0.5 * z * z + torch.log(diagonal) - LOG_SQRT_2PI  # log N(x_j | x_<j, k), (B, M, D)
        before = torch.cat([torch.zeros_like(terms[..., :1]), torch.cumsum(terms, -1)[..., :-1]], -1)
        logits = torch.log_softmax(self.log_weights.unsqueeze(-1) + before, dim=1)  # log p(k | x_<d): O(1) values
        log_scales = -torch.log(diagonal).expand_as(z)
        return MixtureParams(logits.transpose(1, 2), means.transpose(1, 2), log_scales.transpose(1, 2))

    # -- cached step: O(M D) per value (a full covariance couples every position) ---------
    def initial_state(self, batch_size):
        """(values seen so far (B, D), zeros beyond; log posterior numerator (B, M))."""
        like = dict(dtype=self.means.dtype, device=self.means.device)
        return (torch.zeros(batch_size, self.num_positions, **like), self.log_weights.expand(batch_size, -1).clone())

    def step(self, value, position, state):
        prefix, logits = state
        position, previous = step_positions(position, self.means.device)
        seen = position > 0
        at_prev = (torch.arange(self.num_positions, device=prefix.device) == previous) & seen  # (D,)
        prefix = torch.where(at_prev, value.to(prefix.dtype).unsqueeze(-1), prefix)
        centred = prefix.unsqueeze(1) - self.means  # (B, M, D); beyond d-1 multiplied by zeros of P
        p_prev = self.precision_tril.index_select(1, previous)[:, 0]  # row d-1 of P_k, (M, D)
        z_prev = torch.einsum("mj,bmj->bm", p_prev, centred)
        p_prev_diag = p_prev.index_select(1, previous)[:, 0]  # (M,)
        logits = torch.where(seen, logits - 0.5 * z_prev * z_prev + torch.log(p_prev_diag) - LOG_SQRT_2PI, logits)
        row = self.precision_tril.index_select(1, position)[:, 0]  # row d of P_k, (M, D)
        diagonal = row.index_select(1, position)[:, 0]  # P_kdd (M,)
        strict = torch.einsum("mj,bmj->bm", row * (torch.arange(self.num_positions, device=row.device) < position),
                              centred)
        mean = self.means.index_select(1, position)[:, 0] - strict / diagonal
        log_scale = (-torch.log(diagonal)).expand_as(mean)
        return MixtureParams(torch.log_softmax(logits, -1), mean, log_scale), (prefix, logits)

    # -- EM -----------------------------------------------------------------------
    @torch.no_grad()
    def fit_closed_form(self, x):
        """EM on real values (N, C, H, W), in float64; returns train_nll_nats (per image), iterations, converged."""
        seq = self.to_sequence(self.validate(x)).double()
        n, D, M = seq.shape[0], self.num_positions, self.components
        if n < M:
            raise ConfigError(f"gaussian-mixture with {M} components needs at least {M} training images, got {n}")
        gen = torch.Generator().manual_seed(self.seed)
        resp = _kmeans_responsibilities(seq, M, gen)
        previous, converged, iteration = -math.inf, False, 0
        for iteration in range(1, self.iterations + 1):
            log_w, mu, tril = _m_step(seq, resp, self.reg)
            log_joint = _component_log_density(seq, mu, tril) + log_w  # (N, M)
            total = torch.logsumexp(log_joint, -1)
            resp = torch.exp(log_joint - total.unsqueeze(-1))
            mean_ll = float(total.mean())
            if mean_ll - previous < self.tolerance:
                converged = True
                break
            previous = mean_ll
        dtype = self.means.dtype
        self.log_weights.copy_(log_w.to(dtype))
        self.means.copy_(mu.to(dtype))
        eye = torch.eye(D, dtype=tril.dtype).expand_as(tril)
        self.precision_tril.copy_(torch.tril(torch.linalg.solve_triangular(tril, eye, upper=False)).to(dtype))
        return {"train_nll_nats": float(-self.log_prob(x).double().mean()), "em_iterations": iteration,
                "converged": converged}


def _component_log_density(seq, mu, tril):
    """log N(x; mu_k, L_k L_k^T): (N, D), (M, D), (M, D, D) -> (N, M); one component at a time (memory N D)."""
    out = []
    for k in range(len(mu)):
        z = torch.linalg.solve_triangular(tril[k], (seq - mu[k]).t(), upper=False)  # (D, N)
        log_det = torch.log(torch.diagonal(tril[k])).sum()
        out.append(-0.5 * (z * z).sum(0) - log_det - seq.shape[1] * LOG_SQRT_2PI)
    return torch.stack(out, -1)


def _m_step(seq, resp, reg):
    """Weights, means and Cholesky factors from responsibilities (N, M); ``reg`` on the diagonals."""
    n, D = seq.shape
    counts = resp.sum(0) + 1e-10  # (M,)
    mu = (resp.t() @ seq) / counts.unsqueeze(-1)
    cov = torch.stack([((seq - mu[k]) * resp[:, k:k + 1]).t() @ (seq - mu[k]) for k in range(len(mu))])
    cov = cov / counts[:, None, None] + reg * torch.eye(D, dtype=seq.dtype)  # (M, D, D)
    tril, info = torch.linalg.cholesky_ex(cov)
    if bool((info > 0).any()):  # not positive definite: add more to the diagonal
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
        tril = torch.linalg.cholesky(cov + 1e-6 * scale[:, None, None] * torch.eye(D, dtype=seq.dtype))
    return torch.log(counts / counts.sum()), mu, tril


def _kmeans_responsibilities(seq, M, gen, rounds: int = 10):
    """Hard responsibilities (N, M) from k-means++ seeds and ``rounds`` Lloyd steps."""
    n = seq.shape[0]
    centres = seq[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, M):
        nearest = torch.cdist(seq, centres).min(1).values ** 2
        probs = nearest / nearest.sum() if float(nearest.sum()) > 0 else torch.full_like(nearest, 1 / n)
        centres = torch.cat([centres, seq[torch.multinomial(probs, 1, generator=gen)]])
    for _ in range(rounds):
        label = torch.cdist(seq, centres).argmin(1)
        for k in range(M):
            members = seq[label == k]
            if len(members):
                centres[k] = members.mean(0)
    label = torch.cdist(seq, centres).argmin(1)
    return torch.nn.functional.one_hot(label, M).to(seq.dtype)
