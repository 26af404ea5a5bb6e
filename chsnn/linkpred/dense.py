"""The dense kernels: exact and node (L3n) scores of one mask by blocked dense
matrix products, in memory that does not grow with density."""

from __future__ import annotations

import torch


def _factor_dense(h, deg: torch.Tensor, common: torch.Tensor, square: bool = False, positive: bool = False) -> torch.Tensor:
    """Dense sqrt(h(deg, c)) (or h), 0 where ``c >= deg`` (only on paths of
    existing links, or the node itself) and, with ``positive``, where c = 0."""
    keep = common < deg
    if positive:
        keep &= common > 0
    safe = torch.where(keep, common, deg - 1)  # finite terms everywhere
    term = h(deg.expand_as(common), safe)
    if not square:
        term = term.clamp_(min=0).sqrt_()
    return term.masked_fill_(~keep, 0.0)


def dense_exact(m: torch.Tensor, h, dtype, chunk: int) -> torch.Tensor:
    """Exact scores of one (n_y, n_x) mask, grouped by the middle input node x1:
    S^T[y, x] = sum_{x1 in N(y)} G[x1, x] sum_{y1 in N(x1)} F[y1, y] M[y1, x],
    ``chunk`` middle nodes at a time (one batched product per block; nodes
    sorted by degree so that the padding of a block to its largest degree
    stays small)."""
    n_y, n_x = m.shape
    dev = m.device
    # one zero row (and column) at index n_y: the padding of short neighbour lists
    M = torch.zeros(n_y + 1, n_x, dtype=dtype, device=dev)
    M[:n_y] = m
    deg_in = m.sum(0, dtype=torch.int64)
    deg_out = m.sum(1, dtype=torch.int64).to(dtype)
    # Ft[y, y1] = F[y1, y]: factor of y1 on paths that end at y (counts exact in float)
    ft = torch.zeros(n_y + 1, n_y + 1, dtype=dtype, device=dev)
    ft[:n_y, :n_y] = _factor_dense(h, deg_out.unsqueeze(0), M[:n_y] @ M[:n_y].t())
    out = torch.zeros(n_y + 1, n_x, dtype=dtype, device=dev)
    deg_cpu = deg_in.cpu()
    order = torch.argsort(deg_cpu, stable=True)
    order = order[deg_cpu[order] > 0]  # isolated inputs are on no path
    x_of, y_of = m.t().nonzero(as_tuple=True)  # input-major: the neighbours of each x1
    starts = (torch.cumsum(deg_cpu, 0) - deg_cpu).to(dev)
    for i in range(0, order.numel(), chunk):
        x1s = order[i : i + chunk]
        width = int(deg_cpu[x1s].max())
        x1s = x1s.to(dev)
        deg_b = deg_in.index_select(0, x1s)
        # ys[j, k]: the k-th output neighbour of x1s[j], n_y (the zero row) past its degree
        k = torch.arange(width, device=dev)
        pos = starts.index_select(0, x1s).unsqueeze(1) + k
        ys = torch.where(k < deg_b.unsqueeze(1), y_of.index_select(0, pos.clamp_(max=y_of.numel() - 1).view(-1)).view(pos.shape), n_y)
        # G[x1, x]: factor of x1 on paths that start at x
        mx = M[:n_y].index_select(1, x1s)
        g = _factor_dense(h, deg_b.to(dtype).unsqueeze(1), mx.t() @ M[:n_y])
        t = torch.bmm(ft[ys.unsqueeze(2), ys.unsqueeze(1)], M[ys])  # (b, width, n_x)
        out.index_add_(0, ys.view(-1), t.mul_(g.unsqueeze(1)).view(-1, n_x))
    return out[:n_y]


def dense_node(m: torch.Tensor, h, dtype, chunk: int) -> torch.Tensor:
    """L3n of one (n_y, n_x) mask with blocked dense products:
    S^T = M @ H_in + H_out @ M, H_in[x1, x] = h(deg(x1), C_X[x1, x]) and
    H_out[y, y1] = h(deg(y1), C_Y[y, y1]) where 0 < C < deg."""
    n_y, n_x = m.shape
    M = m.to(dtype)
    deg_in = m.sum(0, dtype=torch.int64).to(dtype)
    deg_out = m.sum(1, dtype=torch.int64).to(dtype)
    out = torch.empty(n_y, n_x, dtype=dtype, device=m.device)
    for x0 in range(0, n_x, chunk):  # columns x of the first term
        x1 = min(n_x, x0 + chunk)
        h_in = _factor_dense(h, deg_in.unsqueeze(1), M.t() @ M[:, x0:x1], square=True, positive=True)
        out[:, x0:x1] = M @ h_in
    for y0 in range(0, n_y, chunk):  # rows y of the second term
        y1 = min(n_y, y0 + chunk)
        h_out = _factor_dense(h, deg_out.unsqueeze(0), M[y0:y1] @ M.t(), square=True, positive=True)
        out[y0:y1].addmm_(h_out, M)
    return out
