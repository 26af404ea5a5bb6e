"""Cannistraci-Hebb link prediction (package; the split into modules follows)."""

from chsnn.linkpred.planner import *  # noqa: F401,F403
from chsnn.linkpred.planner import (  # noqa: F401
    MEMORY_ENV,
    _dense_exact,
    _dense_node,
    _node_terms,
    _plans,
    _spgemm_dense_torch,
    _wedge_counts,
    _Wedges,
    estimate_memory,
)
from chsnn.linkpred.planner import __all__  # noqa: F401
