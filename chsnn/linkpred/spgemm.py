"""Sparse-sparse products into a dense block diagonal: scipy row blocks on a
thread pool on the CPU, torch's CSR product (cuSPARSE) on accelerators."""

from __future__ import annotations

import numpy as np
import torch


def spgemm_dense(a, b, shape) -> torch.Tensor:
    """Dense (B, n_y, n_x) block diagonal of A @ B for CSR operands
    ``(crow, col, values, n_cols)`` over the stacked graphs (A has B*n_y rows,
    B has B*n_x columns)."""
    if a[0].device.type == "cpu":
        return spgemm_dense_cpu(a, b, shape)
    return spgemm_dense_torch(a, b, shape)


def spgemm_dense_torch(a, b, shape) -> torch.Tensor:
    # On accelerators: torch's sparse CSR product (cuSPARSE), no host round trip.
    B, n_y, n_x = shape
    a_crow, a_col, a_val, inner = a
    b_crow, b_col, b_val, n_cols = b
    out = torch.zeros(shape, dtype=a_val.dtype, device=a_val.device)
    if a_col.numel() == 0 or b_col.numel() == 0:
        return out
    am = torch.sparse_csr_tensor(a_crow, a_col, a_val, (B * n_y, inner), check_invariants=False)
    bm = torch.sparse_csr_tensor(b_crow, b_col, b_val, (inner, n_cols), check_invariants=False)
    prod = am @ bm
    crow, col = prod.crow_indices(), prod.col_indices()
    rows = torch.repeat_interleave(torch.arange(B * n_y, device=col.device), crow[1:] - crow[:-1], output_size=col.numel())
    out.view(-1)[rows * n_x + col % n_x] = prod.values()
    return out


def spgemm_dense_cpu(a, b, shape) -> torch.Tensor:
    # scipy's SpGEMM releases the GIL: row blocks run on all of torch's threads.
    import scipy.sparse as sp

    B, n_y, n_x = shape
    a_crow, a_col, a_val, inner = (t.numpy() if isinstance(t, torch.Tensor) else t for t in a)
    b_crow, b_col, b_val, n_cols = (t.numpy() if isinstance(t, torch.Tensor) else t for t in b)
    # toarray(out=...) below fills whole rows, zeros included.
    out = (np.empty if B == 1 else np.zeros)((B * n_y, n_x), dtype=a_val.dtype)
    if a_col.size == 0 or b_col.size == 0:
        out.fill(0)
        return torch.from_numpy(out).view(shape)
    bm = sp.csr_matrix((b_val, b_col, b_crow), shape=(inner, n_cols))
    n_rows = B * n_y
    # Split the rows of A into blocks of about equal entries, one per thread.
    n_blocks = max(1, min(torch.get_num_threads(), n_rows))
    cuts = np.searchsorted(a_crow, np.linspace(0, a_crow[-1], n_blocks + 1), side="left")
    cuts[0], cuts[-1] = 0, n_rows
    cuts = np.unique(cuts)

    def block(i: int) -> None:
        r0, r1 = int(cuts[i]), int(cuts[i + 1])
        lo, hi = a_crow[r0], a_crow[r1]
        am = sp.csr_matrix((a_val[lo:hi], a_col[lo:hi], a_crow[r0 : r1 + 1] - lo), shape=(r1 - r0, inner))
        prod = am @ bm
        if B == 1:
            prod.toarray(out=out[r0:r1])
        else:  # only the diagonal blocks are non-zero
            rows = np.repeat(np.arange(r0, r1), np.diff(prod.indptr))
            out.reshape(-1)[rows * n_x + prod.indices % n_x] = prod.data

    if len(cuts) > 2:
        list(_thread_pool().map(block, range(len(cuts) - 1)))
    else:
        block(0)
    return torch.from_numpy(out).view(shape)


_POOL = None


def _thread_pool():
    global _POOL
    if _POOL is None or _POOL._max_workers < torch.get_num_threads():
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="chsnn-spgemm")
    return _POOL
