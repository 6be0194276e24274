"""Joint refinement of teacher and weight chain (SPEC.md §4.1).

``RefineModel`` runs the teacher and the S-Student (the network of chain width) on the same batch. The S-Student's
backbone parameters are materialised from the chain every step with differentiable gather / sum ops
(``materialise``: the allocation at chain width; expansion's whole-cluster column sums use its ``column_sums``, so
expansion at chain width reproduces this network bitwise) and applied with ``torch.func.functional_call`` to a module of spec
``chain_spec``; its BNNeck / classifier are its own, its BN running statistics are its own buffers. CNN BN affine
parameters are tied to the teacher's (cluster means of the live teacher γ/β, SPEC.md §2.4); ViT patch embedding /
tokens / positions are the teacher's own tensors (shared).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from oskt.chain.allocation import Alloc, allocations
from oskt.chain.chain import WeightChain
from oskt.chain.materialise import materialise
from oskt.models.factory import ReIDModel, ReIDOutput, build_model


class RefineModel(nn.Module):
    """Teacher + chain + S-Student heads, everything trainable.

    Training forward returns ``(teacher_out, student_out)`` (two ``ReIDOutput``); eval forward returns the two
    retrieval features. ``refining_loss()`` is the sum of squared differences between every teacher row and its
    chain row (plus, for the ViT, the full-width bias / LN genes vs the teacher's), gradients into both; the caller
    applies the constant (CNN) or linear-ramp (ViT) weight.

    Args:
        teacher: the teacher model (trained further during refinement).
        chain: a chain built from this teacher (``build_chain``).
        num_classes: identities of the S-Student's classifier.
    """

    def __init__(self, teacher: ReIDModel, chain: WeightChain, num_classes: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.chain = chain
        student = build_model(chain.chain_spec, num_classes).to(next(teacher.parameters()).device)
        student.neck_feat = teacher.neck_feat
        # the S-Student's backbone weights come from the chain: keep placeholders as non-persistent buffers so
        # they are neither trained nor saved, and functional_call can substitute them
        for mod in list(student.backbone.modules()):
            for p_name, p in list(mod.named_parameters(recurse=False)):
                del mod._parameters[p_name]
                mod.register_buffer(p_name, p.detach(), persistent=False)
        self.student = student
        idx = nn.Module()
        for part, a in allocations(chain, chain.chain_spec, chain.label(chain.plan.parts[0].name).device).items():
            k = part.replace(".", "__")
            for f in ("to_chain", "slot", "counts"):
                idx.register_buffer(f"{k}__{f}", getattr(a, f), persistent=False)
        self.idx = idx

    def _allocs(self) -> dict:
        out = {}
        for p in self.chain.plan.parts:
            k = p.name.replace(".", "__")
            out[p.name] = Alloc(
                getattr(self.idx, f"{k}__to_chain"),
                getattr(self.idx, f"{k}__slot"),
                getattr(self.idx, f"{k}__counts"),
                True,
            )
        return out

    def student_params(self) -> dict[str, Tensor]:
        """The S-Student's backbone parameters, differentiable w.r.t. the chain and the teacher's tied tensors."""
        live = dict(self.teacher.backbone.named_parameters())
        params = materialise(self.chain, self.chain.chain_spec, self._allocs(), live)
        return {f"backbone.{k}": v for k, v in params.items()}

    def forward(self, x: Tensor) -> tuple[ReIDOutput, ReIDOutput] | tuple[Tensor, Tensor]:
        if self.training:
            self.sync_chain()
        t = self.teacher(x)
        return t, self.student_forward(x)

    def student_forward(self, x: Tensor) -> ReIDOutput | Tensor:
        """The S-Student alone (training: its ``ReIDOutput``; eval: its retrieval feature)."""
        return functional_call(self.student, self.student_params(), (x,))

    def s_student(self) -> SStudentView:
        """A module view of the S-Student (for evaluation: ``model(x)`` in eval mode gives its features)."""
        return SStudentView(self)

    def refining_loss(self) -> Tensor:
        """``Σ_l Σ_i ||W_T,l[i] - C_l[label(i)]||²`` over all clustered layers (+ ViT bias / LN genes), SPEC.md §4.1."""
        params = dict(self.teacher.backbone.named_parameters())
        terms = []
        for r in self.chain.plan.rows:
            c = self.chain.gene(r.param)
            idx = self.chain.row_labels(r.out, r.repeat)
            terms.append((params[r.param] - c.index_select(0, idx)).pow(2).sum())
        for v in self.chain.plan.vectors:
            if v.gene:
                terms.append((params[v.param] - self.chain.gene(v.param)).pow(2).sum())
        return torch.stack(terms).sum()

    @torch.no_grad()
    def sync_chain(self) -> None:
        """Refresh the chain's teacher snapshot (BN stats / affine, ViT stem, proj biases) from the live teacher;
        called every training step, and to be called before ``save_chain`` if the teacher changed since."""
        self.chain.capture_teacher(self.teacher)


class SStudentView(nn.Module):
    """The S-Student of a ``RefineModel`` as a model of its own (``spec`` = the chain's), sharing every tensor:
    evaluating it measures the chain network itself, which is what expansion at chain width starts from."""

    def __init__(self, refine: RefineModel) -> None:
        super().__init__()
        self.refine = refine
        self.spec = refine.chain.chain_spec

    @property
    def neck_feat(self) -> str:
        return self.refine.student.neck_feat

    @neck_feat.setter
    def neck_feat(self, value: str) -> None:  # evaluate() sets the retrieval feature for its call
        self.refine.student.neck_feat = value

    def forward(self, x: Tensor) -> ReIDOutput | Tensor:
        return self.refine.student_forward(x)
