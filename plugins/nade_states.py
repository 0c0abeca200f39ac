"""Binary NADE by distinct hidden states: the eager CPU pass for K = 2 (used by ``nade``).

With binary inputs the running pre-activation a_d = c + sum_{j<d} x_j W_j changes only after a
position whose value is 1. An image with m ones p_1 < ... < p_m has m + 1 distinct states

    S_0 = c,   S_k = S_{k-1} + W_{p_k}        (H,)

and position d uses S_{k(d)}, k(d) = the number of ones before d. On binarized MNIST (about 13%
ones) that is about 8x fewer activations than the D per image of a position-by-position pass.
The states are added in position order, one float addition each, so every a_d is bitwise the
running sum's; position d's logit is the dot product act(S_{k(d)}) . V_d, one independent dot
product per (image, position) (``torch.sparse.sampled_addmm``): an image's logits do not depend
on the rest of its batch.
"""

from __future__ import annotations

import threading
import warnings

import torch

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}
ACTIVATIONS_ = {"sigmoid": torch.sigmoid_, "relu": torch.relu_}  # in place

# Rows of the state table are padded so that its size is a multiple of this many floats: on one
# thread the activation then runs vectorised on every element (no scalar tail whose rounding could
# differ with the row's place in the table).
TABLE_ALIGN = 64
# The state tables' memory is kept per thread between calls, up to this many bytes each (64 MB:
# training batches up to about 250 binarized-MNIST images): writing tens of MB of freshly mapped
# pages costs as much as the arithmetic on them.
KEEP_BYTES = 2**26
# The forward pass builds the state table this many floats at a time (8 MB of float32), so that its
# memory stays bounded however many ones the batch has (measured on this CPU: 0.5-8 MB chunks
# score as fast as one table; 0.5 MB ones are slower, their per-chunk calls dominate).
CHUNK_ELEMENTS = 2**21
_kept = threading.local()


def table_memory(rows: int, columns: int, like: torch.Tensor, slot: int = 0) -> torch.Tensor:
    """An uninitialised (rows, columns) tensor of ``like``'s dtype and device, on memory reused
    from the previous call in this thread with the same ``slot`` when it is large enough (and at
    most KEEP_BYTES). Slot 0: the activations; slot 1: backward's state gradients."""
    numel = rows * columns
    kept = getattr(_kept, "buffers", None)
    if kept is None:
        kept = _kept.buffers = {}
    buffer = kept.get(slot)
    if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
        buffer = like.new_empty(numel)
        if numel * buffer.element_size() <= KEEP_BYTES:
            kept[slot] = buffer
    return buffer[:numel].view(rows, columns)


def aligned_rows(rows: int, columns: int) -> int:
    """The fewest rows >= ``rows`` whose (rows, columns) table has a multiple of TABLE_ALIGN elements."""
    while rows * columns % TABLE_ALIGN:
        rows += 1
    return rows


def csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A sparse CSR matrix from trusted indices (no invariant check, no beta-state warning)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": only its matrix products are used
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


class StateLayout:
    """Where each image's states live in a (N, H) table, N = B + number of ones in the batch.

    Rows are rank-major: rank k holds state k of every image with at least k ones, the images
    sorted by their count of ones (most first), so rank k is rows offsets[k] .. offsets[k] +
    counts[k] and its images are the first counts[k] of rank k-1.

    x: (B, D) bool, the values in generation order.
      counts, offsets: list[int] (M + 1,), images and first row per rank (M: most ones in one image)
      ones_at: (N - B,) long, the position p_k whose weight row (B + i) adds
      row: (D, B) long, the state row that position d of image b uses
      crow, col, entry: the (N, D) pattern of (state, position) pairs in CSR form, and where
        each (position, image) pair sits in it, (D, B) long
    """

    def __init__(self, x: torch.Tensor) -> None:
        batch, positions = x.shape
        device = x.device
        ones = x.sum(1)
        order = torch.argsort(ones, descending=True, stable=True)
        rank_of = torch.empty_like(order)
        rank_of[order] = torch.arange(batch, device=device)
        top = int(ones.max()) if batch else 0
        counts = torch.bincount(ones, minlength=top + 1).flip(0).cumsum(0).flip(0)  # images with >= k ones
        offsets = counts.cumsum(0) - counts
        x = x.t()  # (D, B): position-major from here on, as the outputs
        before = torch.zeros(positions, batch, dtype=torch.long, device=device)  # k(d): ones before d
        torch.cumsum(x[:-1], 0, out=before[1:])
        self.row = offsets[before] + rank_of
        position, image = x.nonzero(as_tuple=True)  # the one at (p, b) makes state before + 1 of image b
        made = offsets[before[position, image] + 1] + rank_of[image] - batch
        self.ones_at = torch.empty_like(position)
        self.ones_at[made] = position
        self.counts, self.offsets = counts.tolist(), offsets.tolist()
        self.states = sum(self.counts)
        # each state's first position: 0 at rank 0, else one past the one that made it
        first = torch.cat([self.ones_at.new_zeros(batch), self.ones_at + 1])
        lengths = torch.bincount(self.row.flatten(), minlength=self.states)
        self.crow = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        steps = torch.arange(positions, device=device)
        self.entry = (self.crow[:-1] - first)[self.row] + steps[:, None]
        self.col = torch.empty(batch * positions, dtype=torch.long, device=device)
        self.col[self.entry.flatten()] = steps.repeat_interleave(batch)
        self.by_position = None  # backward's (D, N) pattern, made when first needed

    def state_sums(self, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The pre-activation table S (N', H), N' >= N (padding rows at the end are zeros), from
        W (D, H) and c (H,): rank 0 is c, rank k adds W_{p_k} to rank k-1, in position order."""
        batch, hidden = self.counts[0], W.shape[1]
        rows = aligned_rows(self.states, hidden)
        table = table_memory(rows, hidden, W)
        table[:batch] = c
        table[self.states:] = 0
        torch.index_select(W, 0, self.ones_at, out=table[batch:self.states])
        for k in range(1, len(self.counts)):
            n, previous, current = self.counts[k], self.offsets[k - 1], self.offsets[k]
            table[current:current + n].add_(table[previous:previous + n])  # W_{p_k} + S_{k-1}
        return table

    def scores(self, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, activation: str) -> torch.Tensor:
        """Position d's logit without bias, act(S_{k(d)}) . V_d, for every image: (D, B), from W (D, H),
        c (H,) and V (D, H). The state table is built, activated and read a range of ranks at a time
        (CHUNK_ELEMENTS floats, or one rank when a rank is larger), so its memory does not grow with
        the batch's number of ones; the same additions as ``state_sums``, so the same values."""
        (positions, batch), hidden = self.entry.shape, W.shape[1]
        limit = max(batch, CHUNK_ELEMENTS // hidden)
        memory = table_memory(aligned_rows(limit, hidden) + batch, hidden, W)
        chunk_memory, carry = memory[:-batch], memory[-batch:]  # carry: the previous chunk's last rank's sums
        values = W.new_empty(batch * positions)
        ranks, first = len(self.counts), 0
        while first < ranks:
            end = first + 1
            while end < ranks and self.offsets[end] + self.counts[end] - self.offsets[first] <= limit:
                end += 1
            top, bottom = self.offsets[first], self.offsets[end - 1] + self.counts[end - 1]
            chunk = chunk_memory[:aligned_rows(bottom - top, hidden)]
            if first == 0:
                chunk[:batch] = c
            start = max(top, batch)
            torch.index_select(W, 0, self.ones_at[start - batch:bottom - batch], out=chunk[start - top:bottom - top])
            for k in range(max(first, 1), end):
                n, current = self.counts[k], self.offsets[k] - top
                previous = carry[:n] if k == first else chunk[self.offsets[k - 1] - top:][:n]
                chunk[current:current + n].add_(previous)  # W_{p_k} + S_{k-1}
            carry[:self.counts[end - 1]] = chunk[self.offsets[end - 1] - top:bottom - top]
            ACTIVATIONS_[activation](chunk)
            entries = slice(int(self.crow[top]), int(self.crow[bottom]))
            pattern = csr(self.crow[top:bottom + 1] - self.crow[top], self.col[entries],
                          values.new_zeros(entries.stop - entries.start), (bottom - top, positions))
            values[entries] = torch.sparse.sampled_addmm(pattern, chunk[:bottom - top], V.t()).values()
            first = end
        return values[self.entry]

    def gradients(self, grad: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, activation: str):
        """dW (D, H), dc (H,), dV (D, H) from grad (D, B), the gradient of the logits ``scores`` returned.

        With h_n = act(S_n) and u_n = sum of grad_{b,d} V_d over the positions d of state n:
        dV_d = sum_b grad_{b,d} h_{k(b,d)}; dL/dS_n = u_n * act'(S_n); W_p reaches every state of
        its image from the one it makes on, so dW_p sums the suffix sums R_k = sum_{k' >= k} dL/dS_k'
        of the states it makes, and dc every image's R_0. Sparse matrix products over the (state,
        position) pattern: no per-position loop and no (D, B, H) tensor.
        """
        positions, batch = self.entry.shape
        hidden = ACTIVATIONS_[activation](self.state_sums(W, c))[:self.states]
        values = grad.new_empty(batch * positions)
        values[self.entry.flatten()] = grad.flatten()
        u = table_memory(self.states, W.shape[1], W, slot=1)
        torch.addmm(u, csr(self.crow, self.col, values, (self.states, positions)), V, beta=0, out=u)
        if self.by_position is None:  # (D, N) pattern: position d's B states, columns ascending
            cols, order = torch.sort(self.row, dim=1)
            self.by_position = (torch.arange(0, batch * positions + 1, batch, device=grad.device), cols.flatten(),
                                order + torch.arange(positions, device=grad.device)[:, None] * batch)
        crow, cols, order = self.by_position
        dV = V.new_empty(V.shape)
        torch.addmm(dV, csr(crow, cols, grad.flatten()[order.flatten()], (positions, self.states)), hidden,
                    beta=0, out=dV)
        if activation == "sigmoid":
            u.mul_(torch.addcmul(hidden, hidden, hidden, value=-1, out=hidden))  # h - h^2 = act'(S)
        else:
            u.mul_(hidden.gt_(0))
        for k in reversed(range(1, len(self.counts))):  # R_{k-1} = dL/dS_{k-1} + R_k, image by image
            n, previous, current = self.counts[k], self.offsets[k - 1], self.offsets[k]
            u[previous:previous + n].add_(u[current:current + n])
        dW = W.new_zeros(W.shape).index_add_(0, self.ones_at, u[batch:])
        return dW, u[:batch].sum(0), dV
