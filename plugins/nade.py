"""NADE (Larochelle & Murray, 2011): registered as ``nade``.

All weights are indexed by generation position d (position d models x_{o(d)}):

    a_d = c + sum_{j<d} W_j[x_j]          (H,)   running pre-activation
    h_d = act(a_d)                        (H,)
    binary:  logit p(x_d = 1) = V_d . h_d + b_d          V (D, H), b (D,)
    K > 2:   logits of x_d    = V_d h_d + b_d            V (D, K, H), b (D, K)

The input weights W have shape (D, K-1, H): value k > 0 at position j adds
W[j, k-1] to every later pre-activation, value 0 adds nothing (for binary data this
is the usual W x with W of D*H entries). Free parameters: 2DH + D + H for K = 2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from densreg.plugins.nade_states import ACTIVATIONS, ACTIVATIONS_, StateLayout
from densreg.registry import ConfigError, DensityModel, categorical_from_uniform
from densreg.registry.protocol import step_positions


# Positions per block of the eager pass: at most MAX_BLOCK, fewer when a block's (T, B, H)
# workspace would pass BLOCK_ELEMENTS floats (measured on this 2-core CPU, H = 500: 8 positions
# beat 2, 4 and 16 at batch 100 and 500).
BLOCK_ELEMENTS = 2**22
MAX_BLOCK = 8
# Training takes the pass by states while the batch has at most this many states per (image,
# position) (binarized MNIST: about 0.14); denser batches take the blocked pass, whose memory
# does not grow with the number of ones.
MAX_TRAINING_STATES = 0.25


def block_size(d: int) -> int:
    """The divisor of d closest to sqrt(d) (block length of the traced pass, ``preactivations``)."""
    return min((t for t in range(1, d + 1) if d % t == 0), key=lambda t: abs(t - math.sqrt(d)))


def eager_block(batch: int, hidden: int, positions: int) -> int:
    """Positions T per block of the eager pass for ``batch`` images and ``hidden`` units (1..MAX_BLOCK)."""
    return max(1, min(MAX_BLOCK, positions, BLOCK_ELEMENTS // max(1, batch * hidden)))


def state_layout(seq: torch.Tensor, codes: torch.Tensor, training: bool = False) -> StateLayout | None:
    """The batch's StateLayout when the pass by states applies to binary values ``seq`` (B, D) with
    input codes ``codes`` (B, D): on CPU in float32/64, unless ``training`` (a gradient will be
    needed) on images so dense in ones that the state tables would approach a (D, B, H) tensor
    (more than MAX_TRAINING_STATES per value)."""
    if codes.device.type != "cpu" or codes.dtype not in (torch.float32, torch.float64):
        return None
    layout = StateLayout(seq > 0)
    if training and layout.states > seq.numel() * MAX_TRAINING_STATES:
        return None
    return layout


def times_derivative_(grad: torch.Tensor, h: torch.Tensor, activation: str, work: torch.Tensor) -> torch.Tensor:
    """grad * act'(a) in place, from h = act(a) alone: h (1 - h) for sigmoid, [h > 0] for relu."""
    if activation == "sigmoid":
        return grad.mul_(torch.mul(h, -1, out=work).add_(1).mul_(h))
    return grad.masked_fill_(h <= 0, 0)


class BlockedNADE(torch.autograd.Function):
    """NADE's input-to-output pass, position by position in cache-sized blocks, with a backward
    that recomputes the activations.

    Inputs: codes (B, D*J) float (one-hot input codes, J = K-1; not differentiated), W (D*J, H),
    c (H,), V (D, O, H) (O = 1 for binary data, else K), activation, block T, and whether grad
    mode was on at the call (nothing is kept for backward when it was not).
    Output: logits without the bias, (D, B, O).

    The running pre-activation a_d = c + sum_{j<d} W_j[x_j] of a block's T positions is written
    into a (T, B, H) workspace (one fused multiply-add per position), activated in one pass, and
    the block's logits read off it. Only a at each block's first position, (D/T, B, H), is
    kept for backward, which walks the blocks in reverse, recomputes the block's activations and
    carries the gradient of the running sum: no (D, B, H) tensor ever exists.
    """

    @staticmethod
    def positions(codes, W, D):
        """Per-position views, made once: inputs x_d (B, J) and input weights W_d (J, H), d < D."""
        J = codes.shape[1] // D
        return codes.view(codes.shape[0], D, J).unbind(1), W.view(D, J, W.shape[-1]).unbind(0)

    @staticmethod
    def running_sums(slots, xs, ws, s, e, end=None):
        """slots[i] = a_{s+i} for the block's positions s..e-1, from slots[0] = a_s (B, H); a_e into ``end``."""
        for i, d in enumerate(range(s, e - 1)):
            BlockedNADE.add_input(slots[i], xs[d], ws[d], slots[i + 1])
        if end is not None:
            BlockedNADE.add_input(slots[e - s - 1], xs[e - 1], ws[e - 1], end)

    @staticmethod
    def add_input(a, x_d, w_d, out):
        """out = a + x_d W_d (B, H): the running sum after position d (binary data: one multiply-add)."""
        if x_d.shape[1] == 1:
            torch.addcmul(a, x_d, w_d, out=out)
        else:
            torch.addmm(a, x_d, w_d, out=out)

    @staticmethod
    def forward(ctx, codes, W, c, V, activation, block, grad_enabled):
        batch, (D, O, H) = codes.shape[0], V.shape
        xs, ws = BlockedNADE.positions(codes, W, D)
        keep = grad_enabled and any(ctx.needs_input_grad)  # forward itself runs without grad
        starts = codes.new_empty((D + block - 1) // block if keep else 0, batch, H)
        # Two workspaces, alternating: a block's pre-activations, then (in place) its hidden units;
        # its last running sum goes straight into the other's first slot.
        works = [codes.new_empty(block, batch, H) for _ in range(2)]
        slots = [work.unbind(0) for work in works]
        slots[0][0].copy_(c.expand(batch, H))
        out = codes.new_empty(D, batch, O)
        for k, s in enumerate(range(0, D, block)):
            e = min(s + block, D)
            if keep:
                starts[k] = slots[k % 2][0]
            BlockedNADE.running_sums(slots[k % 2], xs, ws, s, e, slots[1 - k % 2][0] if e < D else None)
            h = ACTIVATIONS_[activation](works[k % 2][:e - s])
            # Per-image products, so that an image's logits do not depend on the rest of its batch (a
            # GEMM's summation order can); binary: h * V_d in place and summed, one pass, no temporary.
            if O == 1:
                torch.sum(h.mul_(V[s:e]), -1, out=out[s:e, :, 0])
            else:
                for i, d in enumerate(range(s, e)):
                    torch.mm(h[i], V[d].t(), out=out[d])
        ctx.save_for_backward(codes, W, V, starts)
        ctx.activation, ctx.block = activation, block
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        codes, W, V, starts = ctx.saved_tensors
        block = ctx.block
        batch, (D, O, H) = codes.shape[0], V.shape
        xs, ws = BlockedNADE.positions(codes, W, D)
        dW, dV = torch.empty_like(W), torch.empty_like(V)
        dWs = dW.view(D, -1, H).unbind(0)
        work, grad, scratch = (codes.new_empty(block, batch, H) for _ in range(3))
        slots = work.unbind(0)
        carry = codes.new_zeros(batch, H)  # sum of dL/da_t over the positions t after the current one
        for k in reversed(range(len(starts))):
            s = k * block
            e = min(s + block, D)
            slots[0].copy_(starts[k])
            BlockedNADE.running_sums(slots, xs, ws, s, e)
            h = ACTIVATIONS_[ctx.activation](work[:e - s])
            g = grad_out[s:e]  # (t, B, O)
            torch.bmm(g.transpose(1, 2), h, out=dV[s:e])
            da = torch.mul(g, V[s:e, 0, None], out=grad[:e - s]) if O == 1 else torch.bmm(g, V[s:e], out=grad[:e - s])
            times_derivative_(da, h, ctx.activation, scratch[:e - s])
            for i in reversed(range(e - s)):
                d = s + i
                torch.mm(xs[d].t(), carry, out=dWs[d])
                carry += da[i]
        return None, dW, carry.sum(0), dV, None, None, None


class StateNADE(torch.autograd.Function):
    """Binary NADE's pass by distinct states (``nade_states``), CPU: the same running sums and
    activations as BlockedNADE, each computed once per state instead of once per position.

    Inputs: codes (B, D) float 0/1 (not differentiated), W (D, H), c (H,), V (D, 1, H),
    activation, the batch's StateLayout, and whether grad mode was on at the call.
    Output: logits without the bias, (D, B, 1), as BlockedNADE's. Backward recomputes the state
    table and works on states too (``StateLayout.gradients``).
    """

    @staticmethod
    def forward(ctx, codes, W, c, V, activation, layout, grad_enabled):
        out = layout.scores(W, c, V[:, 0], activation).unsqueeze(-1)
        if grad_enabled and any(ctx.needs_input_grad):
            ctx.save_for_backward(W, c, V)
            ctx.layout, ctx.activation = layout, activation
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        W, c, V = ctx.saved_tensors
        dW, dc, dV = ctx.layout.gradients(grad_out[..., 0], W, c, V[:, 0], ctx.activation)
        return None, dW, dc, dV.unsqueeze(1), None, None, None


class NADE(DensityModel):
    """Neural autoregressive distribution estimator with one hidden layer of ``hidden`` units."""

    registry_name = "nade"
    description = "NADE (Larochelle & Murray 2011): one hidden layer with weights shared across positions"

    def __init__(self, event_shape=(1, 28, 28), num_categories: int = 2, ordering: str = "raster",
                 hidden: int = 500, activation: str = "sigmoid") -> None:
        super().__init__(event_shape, num_categories, ordering)
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden must be a positive integer, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.hidden = hidden
        self.activation = activation
        D, K, H = self.num_positions, self.num_categories, hidden
        out = () if K == 2 else (K,)
        self.W = nn.Parameter(torch.randn(D, K - 1, H) / math.sqrt(D))
        self.c = nn.Parameter(torch.zeros(H))
        self.V = nn.Parameter(torch.randn(D, *out, H) / math.sqrt(H))
        self.b = nn.Parameter(torch.zeros(D, *out))
        self.block = block_size(D)
        mask = torch.ones(self.block, self.block, dtype=torch.bool).tril(-1).repeat_interleave(K - 1, dim=1)
        self.register_buffer("block_mask", mask, persistent=False)  # bool (T, T*(K-1)): s < t

    def config(self):
        return {**super().config(), "hidden": self.hidden, "activation": self.activation}

    def free_parameters(self) -> int:
        """2DH + D + H for binary data; for K > 2 the K-way softmax is invariant to a
        shift shared by the K rows of (V_d, b_d), so D(H+1) entries are not free."""
        D, K, H = self.num_positions, self.num_categories, self.hidden
        if K == 2:
            return 2 * D * H + D + H
        return D * (K - 1) * H + H + D * (K - 1) * (H + 1)

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](a)

    def input_codes(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) int64 -> one-hot of levels 1..K-1, float (B, D, K-1)."""
        if self.num_categories == 2:
            return seq.unsqueeze(-1).to(self.W.dtype)
        return nn.functional.one_hot(seq, self.num_categories)[..., 1:].to(self.W.dtype)

    def preactivations(self, seq: torch.Tensor) -> torch.Tensor:
        """a_d = c + sum_{j<d} W_j[x_j] for every position, (B, D) -> (D, B, H).

        Blocked running sum: positions are cut into blocks of T (T divides D, close to
        sqrt(D)); inside a block a strictly-lower-triangular mask and one batched matmul
        give the partial sums, across blocks an exclusive cumsum of block totals. Same
        O(B D H) result as a cumsum over d, with fewer passes over the (D, B, H) tensor.
        """
        B, D, H = seq.shape[0], self.num_positions, self.hidden
        T, J = self.block, self.num_categories - 1
        nb = D // T
        codes = self.input_codes(seq).reshape(B, nb, T * J).transpose(0, 1)  # (nb, B, T*J)
        weights = self.W.reshape(nb, T * J, H)
        masked = (self.block_mask.to(codes.dtype)[None, :, None, :] * codes[:, None]).reshape(nb, T * B, T * J)
        inside = torch.bmm(masked, weights).reshape(nb, T, B, H)
        totals = torch.bmm(codes, weights)  # (nb, B, H)
        # exclusive running sum (not cumsum - totals, whose rounding would let a block see itself)
        before = torch.cat([torch.zeros_like(totals[:1]), torch.cumsum(totals[:-1], 0)]) + self.c
        return (inside + before[:, None]).reshape(D, B, H)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """h_d for every position under teacher forcing, (B, C, H, W) -> (D, B, H)."""
        return self.act(self.preactivations(self.to_sequence(self.validate(x))))

    def traced_conditional_logits(self, x):
        """``conditional_logits`` as plain tensor operations, for torch.compile and ONNX export."""
        h = self.hidden_states(x)  # (D, B, H)
        if self.num_categories == 2:
            logit = torch.bmm(h, self.V.unsqueeze(-1)).squeeze(-1) + self.b[:, None]  # (D, B)
            return torch.stack([torch.zeros_like(logit), logit], dim=-1).transpose(0, 1)
        return (torch.bmm(h, self.V.transpose(1, 2)) + self.b[:, None]).transpose(0, 1)

    def exported_state_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Binary NADE's pass by distinct states (``nade_states``) as plain tensor operations, for ONNX export:
        values in generation order (B, D) -> logit of x_d = 1 with bias, (B, D).

        With m_b ones in image b and M = max m_b (data-dependent: an ONNX TopK takes it as an input),
        the ones' positions in order are the top M of x_d * (D - d); state k of image b is
        c + W_{p_1} + ... + W_{p_k} (a CumSum over k, padding rows zero), M + 1 states per image
        activated once; position d reads state k(b, d) = ones before d (a Gather into (D, B, H)) and
        its logit is one batched product with V_d. About (1 + ones/D) of the dense pass's activations.
        """
        batch, positions = seq.shape
        x = seq.to(self.W.dtype)
        count = seq.sum(1)  # (B,) ones per image
        most = count.max().item()
        torch._check(most >= 0)
        torch._check(most <= positions)
        steps = torch.arange(positions, device=seq.device)
        key = x * (positions - steps).to(x.dtype)  # ones: D - d > 0 (earlier first), zeros: 0
        top, where = torch.topk(key, most, dim=1)  # (B, M): the ones' positions in order, then padding
        valid = (top > 0).to(x.dtype).unsqueeze(-1)
        added = self.W[:, 0].index_select(0, where.reshape(-1)).reshape(batch, most, self.hidden) * valid  # (B, M, H)
        states = torch.cat([self.c.expand(batch, 1, -1), added], 1).cumsum(1)  # (B, M + 1, H)
        hidden = self.act(states).reshape(batch * (most + 1), self.hidden)
        before = seq.cumsum(1) - seq  # (B, D): ones before d = the state position d reads
        rows = (before + torch.arange(batch, device=seq.device)[:, None] * (most + 1)).t()  # (D, B)
        h = hidden.index_select(0, rows.reshape(-1)).reshape(positions, batch, self.hidden)  # (D, B, H)
        logit = torch.bmm(h, self.V.unsqueeze(-1)).squeeze(-1)  # (D, B)
        return logit.t() + self.b

    def conditional_logits(self, x):
        """Eager: the blocked pass with recomputing backward (BlockedNADE, StateNADE); exported: binary data
        by states (``exported_state_logits``); compiled: the vectorised pass."""
        if torch.compiler.is_exporting() and self.num_categories == 2:
            logits = self.exported_state_logits(self.to_sequence(self.validate(x)))
            return torch.stack([torch.zeros_like(logits), logits], dim=-1)
        if torch.compiler.is_compiling():
            return self.traced_conditional_logits(x)
        logits = self.eager_logits(self.to_sequence(self.validate(x)))
        if self.num_categories == 2:
            return torch.stack([torch.zeros_like(logits), logits], dim=-1)
        return logits

    def eager_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Values in generation order (B, D) -> logits with bias: of x_d = 1 (B, D) for binary data, else (B, D, K)."""
        D, K, H = self.num_positions, self.num_categories, self.hidden
        codes = self.input_codes(seq).reshape(seq.shape[0], -1)
        V = self.V.reshape(D, 1 if K == 2 else K, H)
        training = torch.is_grad_enabled() and any(p.requires_grad for p in (self.W, self.c, self.V))
        layout = state_layout(seq, codes, training) if K == 2 else None
        pass_, extra = (BlockedNADE, eager_block(seq.shape[0], H, D)) if layout is None else (StateNADE, layout)
        with torch.autocast(codes.device.type, enabled=False):  # its products stay in the weights' dtype
            logits = pass_.apply(codes, self.W.reshape(-1, H), self.c, V, self.activation, extra,
                                 torch.is_grad_enabled())  # (D, B, O)
        if K == 2:
            return logits[..., 0].t() + self.b
        return (logits + self.b[:, None]).transpose(0, 1)

    def conditional_log_probs(self, x):
        """Binary data: log p(x_d) = -softplus(-+logit_d), from the one logit of x_d = 1 (the exported
        graph's formula, and log_softmax's value without its (B, D, 2) tensor); otherwise the protocol's."""
        if self.num_categories != 2 or torch.compiler.is_compiling():
            return super().conditional_log_probs(x)
        seq = self.to_sequence(self.validate(x))
        logits = self.eager_logits(seq)
        return -nn.functional.softplus((1 - 2 * seq).to(logits.dtype) * logits)

    def features(self, x):
        """act(c + sum_d W_d[x_d]): the H hidden units after seeing the whole image, (B, H) float.

        This is the hidden layer NADE would compute for a (D+1)-th position: an encoder
        of the full image that shares every input weight with the density model.
        """
        seq = self.to_sequence(self.validate(x))
        codes = self.input_codes(seq).reshape(seq.shape[0], -1)
        return self.act(codes @ self.W.reshape(-1, self.hidden) + self.c)

    def output_logits(self, h: torch.Tensor, V: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of one position from its hidden units h (B, H) and its V, b."""
        if self.num_categories == 2:
            logit = h @ V + b
            return torch.stack([torch.zeros_like(logit), logit], dim=-1)
        return h @ V.t() + b

    # -- sampling ----------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, generator=None, noise=None, naive=False):
        """Exact samples (protocol); binary data takes a fast path that draws the same values.

        The fast path runs the cached step's arithmetic (s += x W_{d-1}, h = act(s + c),
        logit = h . V_d + b_d) without its generic bookkeeping, and draws x_d = 1 when the
        logit exceeds log((1 - u) / u), i.e. when the uniform u exceeds p(x_d = 0). Afterwards
        every draw is checked against ``categorical_from_uniform`` (the generic draw: float64
        softmax and cumsum) on the recorded logits, in one vectorised pass; should rounding make
        any differ, the generic sampler draws the batch instead. So the values are those of the
        generic sampler for the same noise.
        """
        if naive or self.num_categories != 2:
            return super().sample(n, generator=generator, noise=noise, naive=naive)
        device, D = self.W.device, self.num_positions
        if noise is None:
            noise = torch.rand(n, D, generator=generator, dtype=torch.float64)
        noise = noise.to(device, torch.float64)
        threshold = torch.log1p(-noise).sub_(torch.log(noise)).t().contiguous()  # (D, n): logit > it <=> x = 1
        W, V, b = self.W[:, 0], self.V, self.b
        s = torch.zeros(n, self.hidden, dtype=W.dtype, device=device)
        logits = torch.empty(D, n, dtype=W.dtype, device=device)
        drawn = torch.zeros(D, n, dtype=W.dtype, device=device)
        for d in range(D):
            if d:
                s = torch.addcmul(s, drawn[d - 1, :, None], W[d - 1])
            torch.add(self.act(s + self.c) @ V[d], b[d], out=logits[d])
            torch.gt(logits[d], threshold[d], out=drawn[d])
        values = drawn.t().to(torch.int64)
        generic = torch.stack([torch.zeros_like(logits), logits], dim=-1).transpose(0, 1).reshape(-1, 2)  # (n*D, 2)
        if not torch.equal(categorical_from_uniform(generic, noise.reshape(-1)).reshape(n, D), values):
            return super().sample(n, noise=noise)
        return self.from_sequence(values)

    # -- cached O(H) step ---------------------------------------------------
    def initial_state(self, batch_size):
        """(s,) with s (B, H) = sum of W_j[x_j] over the positions seen so far (zeros)."""
        return (torch.zeros(batch_size, self.hidden, dtype=self.W.dtype, device=self.W.device),)

    def step(self, value, position, state):
        (s,) = state
        position, previous = step_positions(position, self.W.device)
        w_prev = self.W.index_select(0, previous)[0]  # (K-1, H)
        onehot = nn.functional.one_hot(value, self.num_categories)[:, 1:].to(s.dtype)  # (B, K-1)
        s = torch.where(position > 0, s + onehot @ w_prev, s)
        h = self.act(s + self.c)
        V = self.V.index_select(0, position)[0]
        b = self.b.index_select(0, position)[0]
        return self.output_logits(h, V, b), (s,)
