"""A trained artifact served as a model (``POST /api/v1/ai/models/deploy`` with an artifact).

An upstream artifact (a fine-tuned model id at the upstream that trained it) becomes
a new model with one upstream: that upstream's base URL and key, sending the
fine-tuned id. A local one (a directory or GGUF file on the node that trained it)
becomes an instance on that node, started on demand, registered as the model the way
``ai.instances.services`` registers instances: vLLM serves Hugging Face weights, and a
LoRA adapter over its base model's weights (``--enable-lora --lora-modules``);
llama.cpp serves GGUF. Either way the model is linked to the job's organisation (or
its creator) and the artifact remembers it: an artifact is deployed once.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from orgs.models import Organisation
from panel.errors import ArtifactDeployed, InvalidRequest, NoArtifact, NotFound

from ..instances import services as instances
from ..models import (
    AIModel,
    Backend,
    ModelKind,
    ModelLink,
    TrainedArtifact,
    TrainingJob,
    Upstream,
)
from ..models.training import ArtifactFormat

# vLLM loads adapters up to --max-lora-rank (16 unless raised, to one of these).
VLLM_LORA_RANKS = (16, 32, 64, 128, 256, 320, 512)
BACKENDS = {
    ArtifactFormat.HF: Backend.VLLM,
    ArtifactFormat.HF_LORA: Backend.VLLM,
    ArtifactFormat.GGUF: Backend.LLAMA_CPP,
}


def _visible(user, queryset, organisation_field: str, creator_field: str):
    """The rows of ``queryset`` ``user`` may see: staff all; others their organisations'
    rows, and their own rows that have no organisation."""
    if user.is_staff:
        return queryset
    return queryset.filter(
        Q(**{f"{organisation_field}__memberships__user": user})
        | Q(**{f"{organisation_field}__isnull": True, creator_field: user})
    ).distinct()


def artifact_get_for_user(*, user, artifact: str = "", job: str = "") -> TrainedArtifact:
    """The artifact (by its id, or its job's) ``user`` may see; 404 otherwise, and 409
    for a visible job that left no artifact (it failed, or has not finished)."""
    if job:
        jobs = _visible(user, TrainingJob.objects.all(), "organisation", "created_by")
        found = jobs.select_related("artifact").filter(public_id=job).first()
        if found is None:
            raise NotFound(f"No training job '{job}'.", param="job")
        if not hasattr(found, "artifact"):
            raise NoArtifact(
                f"The job '{job}' has no trained artifact to deploy: it is {found.status}.",
                param="job",
            )
        artifact = found.artifact.public_id
    artifacts = _visible(user, TrainedArtifact.objects.all(), "organisation", "job__created_by")
    found = artifacts.filter(public_id=artifact).first()
    if found is None:
        raise NotFound(f"No trained artifact '{artifact}'.", param="artifact")
    return found


def _organisation(user, slug: str) -> Organisation:
    organisations = Organisation.objects.all()
    if not user.is_staff:
        organisations = organisations.filter(memberships__user=user)
    found = organisations.filter(slug=slug).first()
    if found is None:
        raise NotFound(f"No organisation '{slug}'.", param="organisation")
    return found


def artifact_deploy(
    *, artifact: TrainedArtifact, user, name: str = "", organisation: str = ""
) -> AIModel:
    """Serve ``artifact`` as a new model linked to its owner (or ``organisation``), once."""
    owner = _organisation(user, organisation) if organisation else None
    with transaction.atomic():
        # Only the artifact's row is locked: PostgreSQL refuses FOR UPDATE on the
        # nullable side of the outer joins select_related makes (upstream, organisation).
        artifact = (
            TrainedArtifact.objects.select_for_update(of=("self",))
            .select_related("job__base_model", "job__created_by", "upstream", "organisation")
            .get(pk=artifact.pk)
        )
        if artifact.deployed_model_id is not None:
            raise ArtifactDeployed(
                f"The artifact '{artifact.public_id}' is deployed already, as "
                f"'{artifact.deployed_model.name}'."
            )
        model = _model(artifact, name or artifact.name)
        if artifact.format == ArtifactFormat.UPSTREAM:
            _serve_upstream(artifact, model)
        else:
            _serve_instance(artifact, model)
        _link(artifact, model, owner=owner, user=user)
        artifact.deployed_model = model
        artifact.save(update_fields=["deployed_model"])
    return model


def _model(artifact: TrainedArtifact, name: str) -> AIModel:
    base = artifact.job.base_model
    model = AIModel(
        name=name,
        display_name=f"{name} (fine-tuned)",
        tags=["fine-tuned"],
        kind=base.kind if base else ModelKind.CHAT,
        config=dict(base.config) if base and isinstance(base.config, dict) else {},
    )
    model.full_clean()  # a name in use is a 400, never a second upstream of that model
    model.save()
    return model


def _serve_upstream(artifact: TrainedArtifact, model: AIModel) -> None:
    source = artifact.upstream
    if source is None or not source.base_url:
        raise NoArtifact("The upstream that trained this artifact no longer exists.")
    upstream = Upstream(
        model=model,
        name=source.name,
        base_url=source.base_url,
        api_key=source.api_key,
        api_style=source.api_style,
        provider_model_id=artifact.upstream_model_id,
    )
    upstream.full_clean()
    upstream.save()


def _serve_instance(artifact: TrainedArtifact, model: AIModel) -> None:
    backend = BACKENDS.get(artifact.format)
    if backend is None or not artifact.path:
        raise InvalidRequest(f"An artifact of format '{artifact.format}' cannot be served.")
    options = {
        "backend": backend,
        "model_path": artifact.path,
        "node": artifact.node,
        "on_demand_start": True,
        "organisation": artifact.organisation,
    }
    if artifact.format == ArtifactFormat.HF_LORA:
        base = artifact.job.base_model
        if base is None or not base.train_path:
            raise InvalidRequest(
                "The adapter's base model (or its weights' path, train_path) is gone: "
                "a LoRA adapter is served over them."
            )
        options["model_path"] = base.train_path
        options["extra_args"] = _lora_args(artifact, model.name)
    name = "ft-" + artifact.public_id.split("-", 1)[1][:24]
    instances.instance_create(name=name, options=options, model=model.name, start=False)


def _lora_args(artifact: TrainedArtifact, name: str) -> list[str]:
    """vLLM's flags serving the adapter as ``name``, with a rank limit that admits it."""
    job = artifact.job
    options = {**(job.trainer.options if job.trainer else {}), **(job.hyperparameters or {})}
    rank = options.get("lora_r")
    args = ["--enable-lora", "--lora-modules", f"{name}={artifact.path}"]
    if isinstance(rank, int) and rank > VLLM_LORA_RANKS[0]:
        limit = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
        args[1:1] = ["--max-lora-rank", str(limit)]
    return args


def _link(artifact: TrainedArtifact, model: AIModel, *, owner, user) -> None:
    owner = owner or artifact.organisation
    if owner is not None:
        link = ModelLink(model=model, organisation=owner)
    else:
        link = ModelLink(model=model, user=artifact.job.created_by or user)
    link.full_clean()
    link.save()
