"""Student initialisation methods behind one interface (SPEC.md §5.1, ../shared/BASELINES.md §1, docs/contracts.md).

``INIT_METHODS.get(name)(ctx: InitContext, spec: ModelSpec, num_classes: int) -> InitResult`` for

* ``oskt``: expand the widest fitting weight chain (SPEC.md §3);
* ``scratch``: random init (BASELINES.md §1.1);
* ``wtsel``: uniform weight selection from the teacher (§1.2);
* ``kdpp``: Scratch student + the KD++ auxiliary loss (§1.3);
* ``depgraph``: the teacher structurally pruned to the student's widths (§1.4);
* ``ofa``: Scratch student + the OFA-KD loss (stage branches into the logit space; docs/methods.md §2);
* ``rsd``: Scratch student + the RSD loss (redundancy-suppressed feature correlation; docs/methods.md §3).

Every method returns a model with exactly ``build_model(spec, num_classes)``'s architecture. ``oskt``, ``wtsel`` and
``depgraph`` need a teacher of the student's architecture (``same_arch_reason`` says why); the others accept a
teacher of any architecture (a ViT teacher for a ResNet student and back). Heavy dependencies
(torch-pruning, the chain code, the training package) are imported inside the methods, so importing this package
stays cheap and needs no orchestration stack.
"""

from oskt.baselines import depgraph_init, kdpp, ofa, oskt_init, rsd, scratch, wtsel  # noqa: F401 - register them
from oskt.baselines.registry import (
    INIT_METHODS,
    INIT_NEEDS,
    InitContext,
    InitNeeds,
    InitResult,
    check_student_teacher,
    init_student,
    register_init,
    same_arch_reason,
)

__all__ = [
    "INIT_METHODS",
    "INIT_NEEDS",
    "InitContext",
    "InitNeeds",
    "InitResult",
    "check_student_teacher",
    "init_student",
    "register_init",
    "same_arch_reason",
]
