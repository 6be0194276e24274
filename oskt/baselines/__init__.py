"""Student initialisation methods behind one interface (SPEC.md §5.1, ../shared/BASELINES.md §1, docs/contracts.md).

``INIT_METHODS.get(name)(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult`` for

* ``oskt``: expand the widest fitting weight chain (SPEC.md §3);
* ``scratch``: random init (BASELINES.md §1.1);
* ``wtsel``: uniform weight selection from the teacher (§1.2);
* ``kdpp``: Scratch student + the KD++ auxiliary loss (§1.3);
* ``depgraph``: the teacher structurally pruned to the student's widths (§1.4).

Every method returns a model with exactly ``build_model(spec, num_classes)``'s architecture. Heavy dependencies
(torch-pruning, the chain code, the training package) are imported inside the methods, so importing this package
stays cheap and needs no orchestration stack.
"""

from oskt.baselines import depgraph_init, kdpp, oskt_init, scratch, wtsel  # noqa: F401 - register the methods
from oskt.baselines.registry import INIT_METHODS, InitContext, InitResult, init_student, register_init

__all__ = ["INIT_METHODS", "InitContext", "InitResult", "init_student", "register_init"]
