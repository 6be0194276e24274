"""Weight chains: clustering (SPEC.md §2), joint refinement (§4.1) and expansion to any width (§3).

Choices where SPEC.md says [inferred] (each also documented where it is implemented):

* ViT cosine features: every coupled weight's rows are L2-normalised separately, then concatenated
  (``cluster.row_features``); ``metric`` = auto | euclidean | cosine.
* ViT students: ``vit_stem="teacher"`` keeps the teacher-width stem and the ``dw`` projection (authors' code);
  ``"plain"`` folds ``dw`` into the patch embedding / tokens / positions (exact, README parameter table). Chains need
  a teacher with ``dw`` (the full-width teacher, or a reduced one built with ``vit_stem="teacher"``).
* Expansion options: ``bn_stats="reset"`` (paper) or ``"average"``; ``proj_bias="teacher"`` (authors' quirk) or
  ``"gene"``.
* The chain keeps a snapshot of the teacher tensors expansion needs (CNN BN, ViT stem and proj biases), refreshed from
  the refined teacher by ``RefineModel`` at every training step, so a chain checkpoint alone suffices for ``expand``.
* Cluster labels keep scikit-learn's numbering (``cluster.ward_labels``), so ties of ``copies / size`` in
  expansion go to the same clusters as in the authors' code (SPEC.md §3.1).
* Expansion's column sums: a whole cluster gives the S-Student's column bitwise, a single column the chain entry
  bitwise, any other run its float64 within-cluster prefix difference rounded once (``reference`` states the rule).

Modules: ``cluster`` (labels), ``chain`` (``WeightChain``), ``allocation`` (SPEC.md §3.1), ``materialise`` (the
differentiable S-Student of refinement), ``refine``, ``expander`` (``Expander``: expansion with the chain's cache and
per-student plans, ``student_plan``), ``reference`` (the per-layer oracle expansion is tested against).
"""

from oskt.chain.allocation import allocate
from oskt.chain.chain import WeightChain, build_chain, load_chain, save_chain
from oskt.chain.expander import Expander, expand, expand_from_chains, expand_state_dict
from oskt.chain.refine import RefineModel

__all__ = [
    "Expander",
    "RefineModel",
    "WeightChain",
    "allocate",
    "build_chain",
    "expand",
    "expand_from_chains",
    "expand_state_dict",
    "load_chain",
    "save_chain",
]
