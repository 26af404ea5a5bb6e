"""The wedge kernels: exact and node (L3n) scores as sparse products over the
wedge tables (pairs of links sharing a node) of a stack of graphs."""

from __future__ import annotations

import torch

from chsnn.linkpred.spgemm import spgemm_dense

# Count co-neighbours with a dense histogram while it stays below this many
# bins (64 MiB of int32); beyond it, sort-based counting keeps memory at O(wedges).
DENSE_COUNT_BINS = 1 << 24
# Index arrays are 32-bit below this size.
INT32_LIMIT = 2**31


class Wedges:
    """Both wedge tables of a stack of bipartite graphs, in CSR form.

    Node ids are global over the stack (output y of graph b is ``b*n_y + y``,
    input x is ``b*n_x + x``); middle links are numbered input-major.

    ``P`` (outputs by middle links): row y holds one entry per middle link
    (x1, y1) with x1 a neighbour of y; the entry carries the factor of y1 on
    the paths that end at y.
    ``Q`` (middle links by inputs): row (x1, y1) holds one entry per input x
    neighbouring y1; the entry carries the factor of x1 on paths from x.

    Each entry keeps the intermediate node's degree and a key naming the
    (intermediate, far endpoint) pair: the number of entries that share a key
    is that pair's number of common neighbours.
    """

    def __init__(self, masks: torch.Tensor, links):
        B, n_y, n_x = masks.shape
        dev = masks.device
        self.shape = (B, n_y, n_x)
        b, y_loc, x_loc = links  # output-major: sorted by (graph, y, x)
        self.n_links = n_links = y_loc.numel()
        # 32-bit indices halve the memory traffic whenever they fit.
        wide = max(B * n_y, B * n_x, n_links * max(n_y, n_x) ** 2) >= INT32_LIMIT
        it = torch.int64 if wide else torch.int32
        b, y_loc, x_loc = b.to(it), y_loc.to(it), x_loc.to(it)
        y_of, x_of = b * n_y + y_loc, b * n_x + x_loc
        bt, x_mid, y_mid = (t.to(it) for t in masks.transpose(1, 2).nonzero(as_tuple=True))  # input-major
        x_mid_g, y_mid_g = bt * n_x + x_mid, bt * n_y + y_mid
        self.deg_out = deg_out = torch.bincount(y_of, minlength=B * n_y).to(it)
        self.deg_in = deg_in = torch.bincount(x_mid_g, minlength=B * n_x).to(it)
        out_start = torch.cumsum(deg_out, 0, dtype=it) - deg_out
        in_start = torch.cumsum(deg_in, 0, dtype=it) - deg_in
        zero = torch.zeros(1, dtype=it, device=dev)
        self.mask_crow = torch.cat([out_start, torch.full((1,), n_links, dtype=it, device=dev)])
        self.mask_col = x_of

        # P: for each output-major link (x1, y), the block of middle links of x1.
        lens = deg_in.index_select(0, x_of)
        total = int(lens.sum(dtype=torch.int64))
        self.p_crow = torch.cat([zero, torch.cumsum(lens, 0, dtype=it)]).index_select(0, self.mask_crow)
        self.p_col = mid = _block_positions(in_start.index_select(0, x_of), lens, total)
        self.p_deg = deg_out.index_select(0, y_mid_g).index_select(0, mid)
        # key (y, y1): rows ascending, so the histogram fills cache-friendly
        self.p_key = torch.repeat_interleave(y_of * n_y, lens, output_size=total).add_(y_mid.index_select(0, mid))
        # Q: for each middle link (x1, y1), the inputs linked to y1.
        lens = deg_out.index_select(0, y_mid_g)
        total = int(lens.sum(dtype=torch.int64))
        self.q_crow = torch.cat([zero, torch.cumsum(lens, 0, dtype=it)])
        link = _block_positions(out_start.index_select(0, y_mid_g), lens, total)
        self.q_col = x_of.index_select(0, link)
        self.q_deg = torch.repeat_interleave(deg_in.index_select(0, x_mid_g), lens, output_size=total)
        x_near = self.q_col if B == 1 else x_loc.index_select(0, link)
        self.q_key = torch.repeat_interleave(x_mid_g * n_x, lens, output_size=total).add_(x_near)  # (x1, x)

    def common(self, keys: torch.Tensor, n: int) -> torch.Tensor:
        """Common neighbours of each entry's pair (n: nodes per side per graph)."""
        bins = self.shape[0] * n * n
        if bins <= DENSE_COUNT_BINS:
            # scatter_add_ into int32 bins is several times faster than bincount
            ones = torch.ones(1, dtype=torch.int32, device=keys.device).expand(keys.numel())
            hist = torch.zeros(bins, dtype=torch.int32, device=keys.device).scatter_add_(0, keys.long(), ones)
            return hist.index_select(0, keys)
        _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        return counts[inverse]


def _block_positions(starts: torch.Tensor, lens: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenated ranges ``[starts[i], starts[i] + lens[i])``, in item order."""
    first = torch.cumsum(lens, 0, dtype=lens.dtype) - lens
    shift = torch.repeat_interleave(starts - first, lens, output_size=total)
    return shift.add_(torch.arange(total, device=lens.device, dtype=lens.dtype))


def _factor_csr(h, crow, col, deg, common, n_cols, dtype, square: bool = False):
    """CSR of sqrt(h(deg, c)) (or h itself) over the entries where c < deg.

    Entries with ``c >= deg`` are dropped: there the far endpoint already
    neighbours every neighbour of the intermediate node, so they lie only on
    paths of existing links, or are the node itself. In ultra-sparse layers
    they are a third of all entries, so dropping them saves product work."""
    keep = common < deg
    kept_before = torch.zeros(col.numel() + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(keep, 0, dtype=crow.dtype, out=kept_before[1:])
    idx = keep.nonzero().squeeze(1)
    term = h(deg.index_select(0, idx).to(dtype), common.index_select(0, idx).to(dtype))
    return kept_before.index_select(0, crow), col.index_select(0, idx), term if square else term.sqrt_(), n_cols


def wedge_exact(w: Wedges, h, dtype) -> torch.Tensor:
    """Exact scores of the stack: S^T = P @ Q, P holding the factors of y1
    and Q those of x1."""
    B, n_y, n_x = w.shape
    p = _factor_csr(h, w.p_crow, w.p_col, w.p_deg, w.common(w.p_key, n_y), w.n_links, dtype)
    q = _factor_csr(h, w.q_crow, w.q_col, w.q_deg, w.common(w.q_key, n_x), B * n_x, dtype)
    return spgemm_dense(p, q, w.shape)


def wedge_node(w: Wedges, h, dtype) -> torch.Tensor:
    """L3n: S[y, x] = sum_{x1 in N(y)} h(x1; x) + sum_{y1 in N(x)} h(y1; y),
    each over intermediate nodes sharing a neighbour with the far endpoint."""
    B, n_y, n_x = w.shape
    ones = torch.ones(w.mask_col.numel(), dtype=dtype, device=w.mask_col.device)
    mask_csr = (w.mask_crow, w.mask_col, ones, B * n_x)
    h_in = _pair_terms(h, w.q_key, n_x, w.deg_in, dtype, node_is_row=True)  # (x1, x)
    h_out_t = _pair_terms(h, w.p_key, n_y, w.deg_out, dtype, node_is_row=False)  # (y, y1)
    return spgemm_dense(mask_csr, h_in, w.shape) + spgemm_dense(h_out_t, mask_csr, w.shape)


def _pair_terms(h, keys, n, deg, dtype, node_is_row: bool):
    """CSR over one side's nodes of h(deg(node), c) for every distinct pair in
    ``keys`` (``row * n + local column``), c being the pair's multiplicity."""
    pairs, counts = torch.unique(keys, return_counts=True)
    rows = pairs // n
    cols = rows - rows % n + pairs % n
    node_deg = deg.index_select(0, rows if node_is_row else cols)
    n_nodes = deg.numel()
    crow = torch.zeros(n_nodes + 1, dtype=keys.dtype, device=keys.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_nodes), 0)
    return _factor_csr(h, crow, cols, node_deg, counts.to(keys.dtype), n_nodes, dtype, square=True)
